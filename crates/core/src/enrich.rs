//! The hook through which request-time enrichment (the feature store) fills model inputs
//! before they are checked, batched and run. The core knows nothing of features.

use crate::error::Result;
use crate::repository::ModelVersion;
use crate::request::InferRequest;
use futures::future::BoxFuture;

/// Fills inputs of inference requests from elsewhere (the feature store).
pub trait Enricher: Send + Sync {
    /// Adds the inputs `mv`'s model takes from elsewhere to `request` (a no-op for models
    /// that take none, or when the client sent those inputs itself).
    fn enrich<'a>(&'a self, mv: &'a ModelVersion, request: &'a mut InferRequest) -> BoxFuture<'a, Result<()>>;

    /// Forgets what it knows of `model` (called when the model is loaded, reloaded or unloaded).
    fn model_changed(&self, model: &str);
}
