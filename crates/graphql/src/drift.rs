//! Drift state per model, version and feature: the document `/v2/models/{m}/drift` answers
//! (a worker's [`Monitor::report`], or on a router the fleet's merged view), with its main
//! facts typed.

use crate::{fail, ReadError, Result, Sources};
use async_graphql::{Json, SimpleObject};
use flotilla_core::Error;
use flotilla_drift::monitor::Monitor;
use flotilla_fleet::router::Fleet;
use serde_json::Value;
use std::sync::Arc;

/// Where drift state lives in this process.
#[derive(Clone)]
pub enum DriftSource {
    /// A worker's own monitor.
    Worker(Arc<Monitor>),
    /// A router: the workers' windows, collected and merged by the fleet.
    Fleet(Arc<Fleet>),
}

#[derive(SimpleObject)]
pub struct ModelDrift {
    model: String,
    /// `worker` (this process's windows) or `fleet` (the workers' windows merged).
    scope: String,
    versions: Vec<DriftVersion>,
    /// The whole `/v2/models/{m}/drift` document (reference, settings, recent windows).
    document: Json<Value>,
}

#[derive(SimpleObject)]
pub struct DriftVersion {
    version: String,
    /// Rows in the window that is still open.
    current_window_rows: u64,
    /// Closed windows kept (newest first in `document`).
    closed_windows: usize,
    features: Vec<DriftFeature>,
}

/// One monitored column (a feature, an output, or `multivariate`).
#[derive(SimpleObject)]
pub struct DriftFeature {
    name: String,
    /// The alert state after hysteresis: `ok`, `moderate` or `significant`.
    state: String,
    /// The level the newest closed window reached (null before the first window closes).
    level: Option<String>,
    /// The newest closed window's scores by metric (`psi`, `ks`, ...; null before one closes).
    scores: Option<Json<Value>>,
    /// The metrics at or above their moderate threshold in that window.
    breaches: Vec<String>,
}

pub(crate) async fn model_drift(s: &Sources, model: &str) -> Result<ModelDrift> {
    let off = "drift monitoring is off (serve --drift-monitoring true turns it on)";
    let (doc, scope) = match s.drift.as_ref().ok_or_else(|| fail(ReadError::Off(off)))? {
        DriftSource::Worker(monitor) => {
            // As the REST handler: an unknown or unready model answers why first.
            let r = s.models.model_ready(model, "").await;
            if let Some(e) = r.reason.filter(|_| !r.ready) {
                return Err(fail(e));
            }
            (Some(monitor.report(model).ok_or_else(|| fail(monitor.why_none(model)))?), "worker")
        }
        DriftSource::Fleet(fleet) => {
            if let Err(e) = fleet.drift.collect(fleet, model).await {
                let e = Error::internal(format!("the workers' drift windows of '{model}' do not merge: {e}"));
                return Err(fail(e));
            }
            (fleet.drift.report(model).await, "fleet")
        }
    };
    let doc = doc.ok_or_else(|| {
        fail(Error::not_found(format!(
            "model '{model}' has no drift profile here: build one with `flotilla profile --model {model} --data <training data>`"
        )))
    })?;
    Ok(typed(model, scope, doc))
}

fn typed(model: &str, scope: &str, doc: Value) -> ModelDrift {
    let columns: Vec<String> = doc["reference"]["columns"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let versions = doc["versions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let alerts = v["alerts"].as_object();
            let windows = v["windows"].as_array().map(Vec::as_slice).unwrap_or_default();
            // Newest first: the newest closed window's report of each column.
            let newest: Vec<&Value> = windows
                .first()
                .map(|w| ["features", "outputs"].iter().filter_map(|k| w[*k].as_array()).flatten().collect())
                .unwrap_or_default();
            let mut names = columns.clone();
            for name in alerts.into_iter().flat_map(|a| a.keys()) {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
            let features = names
                .into_iter()
                .map(|name| {
                    let report = newest.iter().find(|c| c["name"] == name.as_str());
                    let mut level = report.and_then(|c| c["level"].as_str().map(String::from));
                    let mut scores = report.map(|c| Json(c["scores"].clone()));
                    if name == "multivariate" {
                        if let Some(mv) = windows.first().map(|w| &w["multivariate"]).filter(|m| m.is_object()) {
                            level = mv["level"].as_str().map(String::from);
                            scores = Some(Json(serde_json::json!({"pca_error_ratio": mv["pca_error_ratio"]})));
                        }
                    }
                    DriftFeature {
                        state: alerts.and_then(|a| a.get(&name)).and_then(Value::as_str).unwrap_or("ok").to_string(),
                        level,
                        scores,
                        breaches: report
                            .and_then(|c| c["breaches"].as_array())
                            .map(|b| b.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                            .unwrap_or_default(),
                        name,
                    }
                })
                .collect();
            DriftVersion {
                version: v["version"].as_str().unwrap_or_default().to_string(),
                current_window_rows: v["current_window"]["rows"].as_u64().unwrap_or(0),
                closed_windows: windows.len(),
                features,
            }
        })
        .collect();
    ModelDrift { model: model.to_string(), scope: scope.to_string(), versions, document: Json(doc) }
}
