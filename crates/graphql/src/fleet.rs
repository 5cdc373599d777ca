//! Fleet workers and placement: the `GET /v2/fleet` view ([`flotilla_fleet::http::fleet_view`])
//! with its main facts typed.

use crate::{fail, ReadError, Result, Sources};
use async_graphql::{Json, SimpleObject};
use serde_json::Value;

#[derive(SimpleObject)]
pub struct FleetView {
    /// The routing policy (`elastic-first`, `balanced`, `guaranteed-first`).
    policy: String,
    /// Whether this router places models (holds the control lease).
    leader: bool,
    workers: Vec<Worker>,
    /// Where each model of the desired state is placed.
    placement: Vec<Placement>,
    /// Which worker consumes each source that takes one consumer.
    sources: Vec<SourceConsumer>,
    /// The whole `/v2/fleet` document (budgets, traffic, digests, routing lanes).
    document: Json<Value>,
}

#[derive(SimpleObject)]
pub struct Worker {
    id: String,
    /// `serving`, `draining`, `drained`, or the router's view (`ejected`, ...).
    state: String,
    /// `guaranteed` or `opportunistic`.
    capacity_class: String,
    hardware: String,
    http: String,
    models: Vec<WorkerModel>,
    /// Requests in the worker (queued or running) and, of those, queued.
    in_flight: u64,
    queued: u64,
    /// Requests this router has sent the worker and not had answered.
    outstanding: u64,
    features: bool,
    drift: bool,
}

#[derive(SimpleObject)]
pub struct WorkerModel {
    name: String,
    versions: Vec<String>,
    capacity_rps: Option<f64>,
    instances: u64,
}

#[derive(SimpleObject)]
pub struct Placement {
    model: String,
    workers: Vec<String>,
    guaranteed: u64,
    opportunistic: u64,
    reason: String,
}

#[derive(SimpleObject)]
pub struct SourceConsumer {
    source: String,
    consumer: String,
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

pub(crate) fn view(s: &Sources) -> Result<FleetView> {
    let fleet =
        s.fleet.as_ref().ok_or_else(|| fail(ReadError::Off("this process is not a fleet router (flotilla route)")))?;
    let doc = flotilla_fleet::http::fleet_view(fleet);
    let workers = items(&doc["workers"])
        .iter()
        .map(|w| Worker {
            id: text(&w["id"]),
            state: text(&w["state"]),
            capacity_class: text(&w["capacity_class"]),
            hardware: text(&w["hardware"]),
            http: text(&w["http"]),
            models: items(&w["models"])
                .iter()
                .map(|m| WorkerModel {
                    name: text(&m["name"]),
                    versions: texts(&m["versions"]),
                    capacity_rps: m["capacity_rps"].as_f64(),
                    instances: m["instances"].as_u64().unwrap_or(0),
                })
                .collect(),
            in_flight: w["load"]["in_flight"].as_u64().unwrap_or(0),
            queued: w["load"]["queued"].as_u64().unwrap_or(0),
            outstanding: w["outstanding"].as_u64().unwrap_or(0),
            features: w["features"].as_bool().unwrap_or(false),
            drift: w["drift"].as_bool().unwrap_or(false),
        })
        .collect();
    let placement = doc["placement"]["models"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(model, p)| Placement {
            model: model.clone(),
            workers: texts(&p["workers"]),
            guaranteed: p["guaranteed"].as_u64().unwrap_or(0),
            opportunistic: p["opportunistic"].as_u64().unwrap_or(0),
            reason: text(&p["reason"]),
        })
        .collect();
    let sources = items(&doc["sources"])
        .iter()
        .map(|l| SourceConsumer { source: text(&l["source"]), consumer: text(&l["consumer"]) })
        .collect();
    Ok(FleetView {
        policy: text(&doc["policy"]),
        leader: doc["control"]["leader"].as_bool().unwrap_or(false),
        workers,
        placement,
        sources,
        document: Json(doc),
    })
}
