//! The hooks through which monitoring sees what a model served. [`Observer`] (drift) gets each
//! successful request's inputs (after enrichment) and raw outputs; [`Recorder`] (the payload
//! log) gets every request that reached the model's inputs, failed ones too, with its id, time,
//! latency and trace id. Neither may slow or block a request: they take cheap clones (tensor
//! data is reference-counted) and hand them off.

use crate::error::Error;
use crate::repository::ModelVersion;
use crate::tensor::Tensor;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub trait Observer: Send + Sync {
    /// Whether requests to `mv` are observed at all (checked per request, before any clone).
    fn wants(&self, mv: &ModelVersion) -> bool;

    /// One served request: its inputs and the model's outputs (all of them, before any
    /// client-side selection or classification).
    fn observe(&self, mv: &ModelVersion, inputs: Vec<Tensor>, outputs: Vec<Tensor>);

    /// Forgets what it knows of `model` (called when the model is loaded, reloaded or unloaded).
    fn model_changed(&self, model: &str);
}

/// One request as the [`Recorder`] sees it.
#[derive(Debug, Clone)]
pub struct Served {
    /// The request's id (generated when the client sent none).
    pub id: String,
    /// When it arrived.
    pub started: SystemTime,
    /// Arrival to answer.
    pub latency: Duration,
    /// The W3C trace id, when tracing is on.
    pub trace_id: Option<String>,
    /// The inputs after enrichment.
    pub inputs: Vec<Tensor>,
    /// The model's raw outputs (all of them), or why the request failed.
    pub outputs: Result<Vec<Tensor>, Error>,
}

pub trait Recorder: Send + Sync {
    /// How requests to `mv` are recorded, or `None` when this one is not (checked per request,
    /// before any clone: a recorder sampling under a budget says no here).
    fn recording(&self, mv: &ModelVersion) -> Option<Arc<dyn Recording>>;

    /// Forgets what it knows of `model` (called when the model is loaded, reloaded or unloaded).
    fn model_changed(&self, model: &str);
}

/// One model version's recording, as its [`Recorder`] hands it to a request.
pub trait Recording: Send + Sync {
    /// Whether a request that ended so (`failed` or not) is kept; asked before [`Served`] is built.
    fn keeps(&self, failed: bool) -> bool;

    /// One request, served or failed after enrichment.
    fn record(self: Arc<Self>, served: Served);
}

/// Puts the calling thread at idle priority (Linux `SCHED_IDLE`): it then runs only on CPU time
/// no request wants. Monitoring threads call it so that they never take a core from serving;
/// where the platform refuses, the thread stays at normal priority (and `what` says so in the log).
pub fn idle_priority(what: &str) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::unix::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
        };
        let policy = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        match set_thread_priority_and_policy(thread_native_id(), thread_priority::ThreadPriority::Min, policy) {
            Ok(()) => tracing::debug!("{what} runs at idle priority"),
            Err(e) => tracing::warn!(error = ?e, "{what} cannot take idle priority; it runs at normal priority"),
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = what;
}
