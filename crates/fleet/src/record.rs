//! What a worker advertises to the fleet: who it is, where it listens, what capacity class and
//! hardware it runs on, which models it has ready with their measured capacity, and its load.
//! One JSON document, the same in the embedded registry (HTTP) and in NATS JetStream KV.

use serde::{Deserialize, Serialize};

/// Guaranteed capacity (on-demand, reserved) stays; opportunistic capacity (spot, preemptible,
/// borrowed) can vanish with a short notice or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityClass {
    Guaranteed,
    Opportunistic,
}

impl CapacityClass {
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityClass::Guaranteed => "guaranteed",
            CapacityClass::Opportunistic => "opportunistic",
        }
    }
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Takes requests for its ready models.
    Serving,
    /// Got a preemption notice: takes no new requests, finishes what it has.
    Draining,
    /// Finished everything after a notice; about to go.
    Drained,
}

/// A model the worker has ready, with what it can carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelOffer {
    pub name: String,
    /// Ready versions, ascending.
    pub versions: Vec<String>,
    /// Requests per second the worker sustains for this model within its latency target,
    /// learned from its own traffic; absent until it has measured some.
    #[serde(default)]
    pub capacity_rps: Option<f64>,
    /// The latency the capacity is measured against (`--latency-target-ms`, or the model's
    /// `latency_target_ms` config parameter).
    pub latency_target_ms: f64,
    /// Measured engine time per request (batching included), milliseconds.
    #[serde(default)]
    pub service_ms: Option<f64>,
    /// Engine instances of the latest version.
    pub instances: usize,
}

/// The worker's load when it last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Inference requests in the worker (queued or running).
    pub in_flight: u64,
    /// Of those, waiting for an engine instance.
    pub queued: u64,
}

/// One worker's registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    /// KServe v2 REST base URL, e.g. `http://10.0.0.7:8000`.
    pub http: String,
    /// gRPC URL, e.g. `http://10.0.0.7:8001` (the router forwards inference over it).
    pub grpc: String,
    pub capacity_class: CapacityClass,
    /// Free text: `cpu-2c`, `h100`, `l4`, ...
    pub hardware: String,
    pub state: WorkerState,
    /// When draining: milliseconds from the notice to the preemption deadline.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// When drained: milliseconds from the notice until the last request finished.
    #[serde(default)]
    pub drained_after_ms: Option<f64>,
    pub models: Vec<ModelOffer>,
    pub load: Load,
    /// Whether the worker has a feature store (Feast's endpoints are forwarded to such workers).
    #[serde(default)]
    pub features: bool,
    /// Whether the worker runs drift monitoring.
    #[serde(default)]
    pub drift: bool,
    /// Unix milliseconds when this worker process started (a restart is a new incarnation).
    pub started_ms: u64,
    /// Increases with every record this incarnation sends: a router keeps the newest.
    pub seq: u64,
    /// How often the worker refreshes its registration, milliseconds.
    pub heartbeat_ms: u64,
    /// The digest of the assignment the worker applied (models it serves from the routers'
    /// artifacts); the only sync data a heartbeat carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_digest: Option<String>,
}

impl WorkerRecord {
    /// The offer for `model`, if the worker has it ready (and has `version`, when one is named).
    pub fn offer(&self, model: &str, version: &str) -> Option<&ModelOffer> {
        self.models.iter().find(|m| m.name == model && (version.is_empty() || m.versions.iter().any(|v| v == version)))
    }

    /// Whether this record is newer than `other` from the same worker.
    pub fn newer_than(&self, other: &WorkerRecord) -> bool {
        (self.started_ms, self.seq) > (other.started_ms, other.seq)
    }
}

/// Checks a record a worker sent before it is believed: ids and URLs must be usable.
pub fn validate(record: &WorkerRecord) -> Result<(), String> {
    let id_ok = !record.id.is_empty()
        && record.id.len() <= 128
        && record.id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !id_ok {
        return Err(format!(
            "worker id {:?} must be 1 to 128 characters of letters, digits, '-', '_' or '.'",
            record.id
        ));
    }
    for (what, url) in [("http", &record.http), ("grpc", &record.grpc)] {
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 256 {
            return Err(format!("worker '{}': {what} address {url:?} must be an http:// or https:// URL", record.id));
        }
    }
    if record.models.len() > 10_000 {
        return Err(format!("worker '{}': {} models is more than a record may list", record.id, record.models.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(id: &str) -> WorkerRecord {
        WorkerRecord {
            id: id.into(),
            http: "http://127.0.0.1:1".into(),
            grpc: "http://127.0.0.1:2".into(),
            capacity_class: CapacityClass::Guaranteed,
            hardware: "cpu-2c".into(),
            state: WorkerState::Serving,
            deadline_ms: None,
            drained_after_ms: None,
            models: vec![ModelOffer {
                name: "m".into(),
                versions: vec!["1".into(), "2".into()],
                capacity_rps: Some(100.0),
                latency_target_ms: 100.0,
                service_ms: Some(1.0),
                instances: 1,
            }],
            load: Load::default(),
            features: false,
            drift: false,
            started_ms: 1,
            seq: 1,
            heartbeat_ms: 1000,
            applied_digest: None,
        }
    }

    #[test]
    fn json_round_trip_and_offers() {
        let r = record("w-1");
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"capacity_class\":\"guaranteed\""), "{text}");
        let back: WorkerRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert!(r.offer("m", "").is_some() && r.offer("m", "2").is_some());
        assert!(r.offer("m", "3").is_none() && r.offer("x", "").is_none());
        let mut later = r.clone();
        later.seq = 2;
        assert!(later.newer_than(&r) && !r.newer_than(&later));
    }

    #[test]
    fn bad_records_are_refused() {
        assert!(validate(&record("ok-1.a_b")).is_ok());
        for bad in ["", "has space", "../x", &"x".repeat(200)] {
            assert!(validate(&record(bad)).is_err(), "{bad:?}");
        }
        let mut r = record("w");
        r.grpc = "ftp://x".into();
        assert!(validate(&r).unwrap_err().contains("grpc address"));
    }
}
