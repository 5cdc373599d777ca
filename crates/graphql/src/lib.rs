//! The read-only GraphQL API at `/graphql` on the HTTP port, a worker's (`flotilla serve`) and
//! a router's (`flotilla route`) alike. One resolver layer over the services that already
//! exist — it decodes GraphQL into their calls and shapes what they return; no business
//! logic lives here.
//!
//! Layout:
//! - this file: [`Sources`] (what the resolvers read), [`schema`] (the Query-only schema with
//!   its depth and complexity limits) and [`routes`] (`POST /graphql` with a JSON body,
//!   `GET /graphql?query=...`, and the GraphiQL page on a plain `GET /graphql`).
//! - [`models`]: the root `Query` and the models through [`flotilla_core::Api`] (repository
//!   index, readiness, config, statistics).
//! - [`features`]: feature views, their sources and lag, online values for entities.
//! - [`drift`]: drift state per model, version and feature (a worker's monitor or the fleet's).
//! - [`fleet`]: workers and placement, from the router's `/v2/fleet` view.
//!
//! Typed fields carry the main facts; a `JSON` field carries each whole document (a model's
//! config, its statistics, the drift document, the fleet view) as the REST endpoint answers
//! it, so nothing is typed twice.
#![forbid(unsafe_code)]

pub mod drift;
pub mod features;
pub mod fleet;
pub mod models;

use async_graphql::{EmptyMutation, EmptySubscription, ErrorExtensions, Schema};
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flotilla_core::auth::{Identity, Scope};
use flotilla_core::Api;
use std::sync::Arc;

/// Deepest selection a query may make (the introspection query GraphiQL sends needs 13).
pub const MAX_DEPTH: usize = 15;
/// Most fields (each counts 1) one query may select, aliases included.
pub const MAX_COMPLEXITY: usize = 1000;

/// The schema: read-only (no mutations, no subscriptions).
pub type FlotillaSchema = Schema<models::Query, EmptyMutation, EmptySubscription>;

/// Why a field has no answer; its GraphQL error carries the error kind (`not_found`, ...) as
/// `extensions.code`, as the REST answers' `flotilla-error-kind` header does.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Core(#[from] flotilla_core::Error),
    /// The part of the server the field reads is not running in this process.
    #[error("{0}")]
    Off(&'static str),
}

impl From<flotilla_features::error::FeatureError> for ReadError {
    fn from(e: flotilla_features::error::FeatureError) -> Self {
        Self::Core(e.into_core())
    }
}

impl ErrorExtensions for ReadError {
    fn extend(&self) -> async_graphql::Error {
        let code = match self {
            ReadError::Core(c) => c.kind.as_str(),
            ReadError::Off(_) => flotilla_core::error::ErrorKind::Unavailable.as_str(),
        };
        async_graphql::Error::new(self.to_string()).extend_with(|_, x| x.set("code", code))
    }
}

/// The GraphQL error of what a service answered (`?` alone would drop the kind).
pub(crate) fn fail(e: impl Into<ReadError>) -> async_graphql::Error {
    e.into().extend()
}

pub(crate) type Result<T> = std::result::Result<T, async_graphql::Error>;

/// What the resolvers read: the protocol operations, and the feature store, drift monitoring
/// and fleet when this process has them.
#[derive(Clone)]
pub struct Sources {
    pub models: Arc<dyn models::Models>,
    pub features: Option<Arc<flotilla_features::FeatureStore>>,
    pub drift: Option<drift::DriftSource>,
    pub fleet: Option<Arc<flotilla_fleet::router::Fleet>>,
}

impl Sources {
    /// A worker's: its [`flotilla_core::Service`], feature store and drift monitor.
    pub fn worker<A: Api>(
        service: Arc<A>,
        features: Option<Arc<flotilla_features::FeatureStore>>,
        monitor: Option<Arc<flotilla_drift::monitor::Monitor>>,
    ) -> Self {
        Self { models: service, features, drift: monitor.map(drift::DriftSource::Worker), fleet: None }
    }

    /// A router's: the fleet answers the protocol, merges the workers' drift and places models.
    pub fn router(fleet: Arc<flotilla_fleet::router::Fleet>) -> Self {
        Self {
            models: fleet.clone(),
            features: None,
            drift: Some(drift::DriftSource::Fleet(fleet.clone())),
            fleet: Some(fleet),
        }
    }
}

/// The schema over `sources`, with the depth and complexity limits.
pub fn schema(sources: Sources) -> FlotillaSchema {
    Schema::build(models::Query, EmptyMutation, EmptySubscription)
        .data(sources)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

#[derive(Clone)]
struct GraphqlState {
    schema: FlotillaSchema,
    max_request_bytes: usize,
    /// A router without a feature store: queries of feature fields only go to a worker's
    /// `/graphql` ([`features::forward`]).
    feature_fleet: Option<Arc<flotilla_fleet::router::Fleet>>,
}

/// `/graphql`: POST a JSON `{"query", "variables", "operationName"}`, or GET with the same
/// as query parameters; a plain GET (no `query`) is the GraphiQL page.
pub fn routes(sources: Sources, max_request_bytes: usize) -> Router {
    let feature_fleet = if sources.features.is_none() { sources.fleet.clone() } else { None };
    let state = GraphqlState { schema: schema(sources), max_request_bytes, feature_fleet };
    Router::new().route("/graphql", get(get_graphql).post(post_graphql)).with_state(state)
}

/// A request that never reached the schema, in GraphQL's error shape.
/// A request answered without running it: GraphQL's error shape, with the status and an
/// `extensions.code` named after it (as the fields' own errors carry).
pub(crate) fn refused(status: StatusCode, message: String) -> Response {
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_argument",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "permission_denied",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal",
    };
    let body = serde_json::json!({ "errors": [{ "message": message, "extensions": { "code": code } }] });
    (status, Json(body)).into_response()
}

/// The caller whose token the HTTP layer checked (`None` when tokens are off); each root field
/// checks the scope it needs.
#[derive(Clone)]
pub(crate) struct Caller(pub Option<Identity>);

async fn execute(s: &GraphqlState, request: async_graphql::Request, caller: Option<Identity>) -> Response {
    if let Some(fleet) = &s.feature_fleet {
        if features::only_feature_fields(&request) {
            // The worker sees the router's fleet token: the caller's scope is checked here.
            if let Some(Err(e)) = caller.as_ref().map(|c| c.require(Scope::FeaturesRead)) {
                let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::FORBIDDEN);
                return refused(status, e.message);
            }
            return features::forward(fleet, &request).await;
        }
    }
    Json(s.schema.execute(request.data(Caller(caller))).await).into_response()
}

async fn post_graphql(State(s): State<GraphqlState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (headers, caller) = (parts.headers, parts.extensions.get::<Identity>().cloned());
    let bytes = match flotilla_http::body::read(&headers, body, s.max_request_bytes).await {
        Ok(b) => b,
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            return refused(status, e.message);
        }
    };
    match serde_json::from_slice::<async_graphql::Request>(&bytes) {
        Ok(request) if request.query.trim().is_empty() => refused(
            StatusCode::BAD_REQUEST,
            "the body is not a GraphQL request: its \"query\" is missing or empty".into(),
        ),
        Ok(request) => execute(&s, request, caller).await,
        Err(e) => refused(
            StatusCode::BAD_REQUEST,
            format!("the body is not a GraphQL request (JSON with a \"query\" string): {e}"),
        ),
    }
}

async fn get_graphql(
    State(s): State<GraphqlState>,
    RawQuery(query): RawQuery,
    caller: Option<axum::Extension<Identity>>,
) -> Response {
    let caller = caller.map(|axum::Extension(identity)| identity);
    let Some(query) = query.filter(|q| q.split('&').any(|kv| kv.starts_with("query="))) else {
        return ([(header::CACHE_CONTROL, "no-store")], Html(GRAPHIQL)).into_response();
    };
    if query.len() > s.max_request_bytes {
        return refused(StatusCode::PAYLOAD_TOO_LARGE, "the query string is larger than the request limit".into());
    }
    match async_graphql::http::parse_query_string(&query) {
        Ok(request) => execute(&s, request, caller).await,
        Err(e) => refused(StatusCode::BAD_REQUEST, format!("the query string is not a GraphQL request: {e}")),
    }
}

/// GraphiQL, loaded from the unpkg CDN by the browser (the server bundles no JavaScript for
/// it; without internet access the page stays blank and `/graphql` still answers queries).
const GRAPHIQL: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Flotilla GraphQL</title>
<link rel="stylesheet" href="https://unpkg.com/graphiql@3.8.3/graphiql.min.css">
<style>body { margin: 0; height: 100vh; } #graphiql { height: 100vh; }</style>
</head>
<body>
<div id="graphiql">Loading GraphiQL from unpkg.com…</div>
<script crossorigin src="https://unpkg.com/react@18.3.1/umd/react.production.min.js"></script>
<script crossorigin src="https://unpkg.com/react-dom@18.3.1/umd/react-dom.production.min.js"></script>
<script crossorigin src="https://unpkg.com/graphiql@3.8.3/graphiql.min.js"></script>
<script>
  const fetcher = GraphiQL.createFetcher({ url: window.location.pathname });
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultQuery: '{\n  models { name versions { version state ready } }\n}\n',
    }),
  );
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests;
