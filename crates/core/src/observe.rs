//! The hook through which drift monitoring sees what a model served: each successful request's
//! inputs (after enrichment) and raw outputs. An observer must never slow or block a request:
//! it takes cheap clones (tensor data is reference-counted) and hands them off.

use crate::repository::ModelVersion;
use crate::tensor::Tensor;

pub trait Observer: Send + Sync {
    /// Whether requests to `mv` are observed at all (checked per request, before any clone).
    fn wants(&self, mv: &ModelVersion) -> bool;

    /// One served request: its inputs and the model's outputs (all of them, before any
    /// client-side selection or classification).
    fn observe(&self, mv: &ModelVersion, inputs: Vec<Tensor>, outputs: Vec<Tensor>);

    /// Forgets what it knows of `model` (called when the model is loaded, reloaded or unloaded).
    fn model_changed(&self, model: &str);
}
