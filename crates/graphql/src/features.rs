//! Feature views from the feature store's registry, their sources with the lag the stream
//! consumers report (the `flotilla_feature_*lag*` gauges), and online values for entity rows
//! through the store's own `get-online-features` path.

use crate::{fail, ReadError, Result, Sources};
use async_graphql::{Json, SimpleObject};
use flotilla_features::definitions::StreamSource;
use flotilla_features::FeatureStore;
use prometheus::core::Collector;
use serde_json::Value;
use std::sync::Arc;

const NO_STORE: &str = "this process has no feature store (serve --feature-repo)";
const MIXED_ON_ROUTER: &str = "a router has no feature store of its own: query the feature fields \
     (featureViews, featureView, onlineFeatures) on their own, and the router sends the query to a worker that has one";

fn store(s: &Sources) -> Result<&Arc<FeatureStore>> {
    let why = if s.fleet.is_some() { MIXED_ON_ROUTER } else { NO_STORE };
    s.features.as_ref().ok_or_else(|| fail(ReadError::Off(why)))
}

/// The root fields that read the feature store.
const FEATURE_FIELDS: &[&str] = &["featureViews", "featureView", "onlineFeatures"];

/// Whether the operation `request` runs selects feature fields and nothing else at its root
/// (`__typename` aside): such a query can run whole on a worker. A document that does not parse
/// is not: the schema answers it with the parse error.
pub(crate) fn only_feature_fields(request: &async_graphql::Request) -> bool {
    use async_graphql::parser::types::{DocumentOperations, Selection};
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else { return false };
    let operation = match (&document.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => match ops.iter().find(|(n, _)| n.as_str() == name) {
            Some((_, op)) => op,
            None => return false,
        },
        (DocumentOperations::Multiple(_), None) => return false,
    };
    let mut features = 0;
    for item in &operation.node.selection_set.node.items {
        match &item.node {
            Selection::Field(f) if FEATURE_FIELDS.contains(&f.node.name.node.as_str()) => features += 1,
            Selection::Field(f) if f.node.name.node.as_str() == "__typename" => {}
            _ => return false,
        }
    }
    features > 0
}

/// Runs `request` on the `/graphql` of the worker in rotation that has a feature store (the
/// one Feast's endpoints go to) and answers what it answers.
pub(crate) async fn forward(
    fleet: &flotilla_fleet::router::Fleet,
    request: &async_graphql::Request,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let answer = crate::refused;
    let Some(worker) = fleet.feature_worker() else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, flotilla_fleet::router::NO_FEATURE_WORKER.into());
    };
    let body = serde_json::json!({
        "query": request.query,
        "operationName": request.operation_name,
        "variables": request.variables,
    });
    let url = format!("{}/graphql", worker.record().http);
    let sent = fleet.http.post(url).json(&body).timeout(std::time::Duration::from_secs(30)).send().await;
    match sent {
        Ok(r) => {
            let status = r.status();
            match r.bytes().await {
                Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
                Err(e) => answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("worker '{}': the answer broke off: {e}", worker.id),
                ),
            }
        }
        Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, format!("worker '{}' did not answer: {e}", worker.id)),
    }
}

#[derive(SimpleObject)]
pub struct FeatureView {
    name: String,
    entities: Vec<String>,
    join_keys: Vec<String>,
    /// Values older than this are OUTSIDE_MAX_AGE (0: kept forever).
    ttl_seconds: f64,
    online: bool,
    description: String,
    tags: Json<Value>,
    features: Vec<Feature>,
    /// Where the view's rows come from: a batch file, a push source, a stream.
    sources: Vec<Source>,
}

#[derive(SimpleObject)]
pub struct Feature {
    name: String,
    dtype: String,
    description: String,
}

#[derive(SimpleObject)]
pub struct Source {
    /// The batch file's path, the push source's name, or the stream's label (`nats:subject`).
    name: String,
    /// `batch`, `push`, or the stream's kind (`nats`, `redis`, `kafka`, `rabbitmq`, `postgres`).
    kind: String,
    /// Seconds between the newest applied message's event time and its application (streams).
    lag_seconds: Option<f64>,
    /// Messages waiting in the stream for this consumer, when the source reports it.
    lag_messages: Option<f64>,
    /// PostgreSQL change data capture: WAL bytes behind the server, and commit-to-visible seconds.
    cdc_lag_bytes: Option<f64>,
    cdc_lag_seconds: Option<f64>,
}

/// The value of `metric`'s series for source `label`, when the consumer has set it.
fn gauge(metric: &impl Collector, label: &str) -> Option<f64> {
    metric.collect().iter().flat_map(|f| f.get_metric()).find_map(|m| {
        let ours = m.get_label().iter().any(|l| l.name() == "source" && l.value() == label);
        ours.then(|| m.get_gauge().get_value())
    })
}

fn sources_of(store: &FeatureStore, v: &flotilla_features::definitions::FeatureView) -> Vec<Source> {
    let plain = |name: String, kind: &str| Source {
        name,
        kind: kind.into(),
        lag_seconds: None,
        lag_messages: None,
        cdc_lag_bytes: None,
        cdc_lag_seconds: None,
    };
    let mut out = Vec::new();
    if let Some(b) = &v.source {
        out.push(plain(b.path.display().to_string(), "batch"));
    }
    if let Some(p) = &v.push_source {
        out.push(plain(p.clone(), "push"));
    }
    if let Some(spec) = &v.stream {
        let label = spec.label();
        let kind = match &spec.source {
            StreamSource::Nats { .. } => "nats",
            StreamSource::Redis { .. } => "redis",
            StreamSource::Kafka { .. } => "kafka",
            StreamSource::Rabbitmq { .. } => "rabbitmq",
            StreamSource::Postgres { .. } => "postgres",
        };
        let m = &store.metrics;
        out.push(Source {
            lag_seconds: gauge(&m.stream_lag_seconds, &label),
            lag_messages: gauge(&m.stream_lag_messages, &label),
            cdc_lag_bytes: gauge(&m.cdc_lag_bytes, &label),
            cdc_lag_seconds: gauge(&m.cdc_lag_seconds, &label),
            ..plain(label, kind)
        });
    }
    out
}

fn typed(store: &FeatureStore, v: &flotilla_features::definitions::FeatureView) -> FeatureView {
    FeatureView {
        name: v.name.clone(),
        entities: v.entities.clone(),
        join_keys: v.join_keys.iter().map(|(k, _)| k.clone()).collect(),
        ttl_seconds: v.ttl_us as f64 / 1e6,
        online: v.online,
        description: v.description.clone(),
        tags: Json(serde_json::json!(v.tags)),
        features: v
            .features
            .iter()
            .map(|f| Feature { name: f.name.clone(), dtype: f.dtype.to_string(), description: f.description.clone() })
            .collect(),
        sources: sources_of(store, v),
    }
}

pub(crate) fn views(s: &Sources) -> Result<Vec<FeatureView>> {
    let store = store(s)?;
    Ok(store.registry.views.iter().map(|v| typed(store, v)).collect())
}

pub(crate) fn view(s: &Sources, name: &str) -> Result<FeatureView> {
    let store = store(s)?;
    match store.registry.view(name) {
        Some(v) => Ok(typed(store, v)),
        None => Err(fail(flotilla_core::Error::not_found(format!("unknown feature view '{name}'")))),
    }
}

/// Online values, column-wise as Feast answers them.
#[derive(SimpleObject)]
pub struct OnlineFeatures {
    /// Entity keys first, then the features in the order asked for.
    feature_names: Vec<String>,
    columns: Vec<OnlineColumn>,
}

#[derive(SimpleObject)]
pub struct OnlineColumn {
    name: String,
    /// One value per entity row (null when missing).
    values: Json<Value>,
    /// PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE or NULL_VALUE per row.
    statuses: Vec<String>,
    /// RFC 3339 event time per row.
    event_timestamps: Vec<String>,
}

pub(crate) async fn online(
    s: &Sources,
    features: Option<Vec<String>>,
    feature_service: Option<String>,
    entities: Value,
    full_feature_names: bool,
) -> Result<OnlineFeatures> {
    let store = store(s)?;
    // The same body `/get-online-features` takes, parsed and answered by the same code.
    let mut body = serde_json::json!({ "entities": entities, "full_feature_names": full_feature_names });
    if let Some(f) = features {
        body["features"] = serde_json::json!(f);
    }
    if let Some(f) = feature_service {
        body["feature_service"] = Value::String(f);
    }
    let request = store.parse_online_request(&body).map_err(fail)?;
    let response = store.get_online_features(&request).await.map_err(fail)?;
    let doc = response.to_json();
    let strings = |c: &Value, key: &str| -> Vec<String> {
        c[key].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let columns = response
        .feature_names
        .iter()
        .zip(doc["results"].as_array().map(Vec::as_slice).unwrap_or_default())
        .map(|(name, c)| OnlineColumn {
            name: name.clone(),
            values: Json(c["values"].clone()),
            statuses: strings(c, "statuses"),
            event_timestamps: strings(c, "event_timestamps"),
        })
        .collect();
    Ok(OnlineFeatures { feature_names: response.feature_names, columns })
}
