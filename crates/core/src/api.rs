//! The operations of the KServe v2 / Triton protocol as the adapters call them. Two things
//! implement [`Api`]: a worker's [`crate::Service`] (models in this process) and the fleet
//! router (models on the workers behind it), so the HTTP and gRPC adapters — decoding, binary
//! tensors, compression, streaming, the error table — are the same code in front of both.

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::protocol::LoadOptions;
use crate::repository::IndexEntry;
use crate::request::{InferRequest, InferResponse};
use crate::service::{ModelMetadata, ServiceOptions, VersionStats};
use flotilla_proto::inference::ModelConfig;
use std::future::Future;
use std::sync::Arc;

/// Whether a model (version) takes requests; when not, the error that says why (an unknown
/// model is not ready, as in Triton: gRPC answers `ready: false`, HTTP the error's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: Option<Error>,
}

impl Readiness {
    pub fn ready() -> Self {
        Self { ready: true, reason: None }
    }
    pub fn not_ready(reason: Error) -> Self {
        Self { ready: false, reason: Some(reason) }
    }
}

/// Every protocol operation, once. Methods that a worker answers from memory and a router
/// answers by asking its workers are async for both.
pub trait Api: Send + Sync + 'static {
    /// Server name and version (server metadata).
    fn options(&self) -> &ServiceOptions;
    /// The metrics registry the adapters record responses into.
    fn metrics(&self) -> &Metrics;
    fn live(&self) -> bool;
    fn ready(&self) -> bool;
    fn model_ready(&self, name: &str, version: &str) -> impl Future<Output = Readiness> + Send;
    fn model_metadata(&self, name: &str, version: &str) -> impl Future<Output = Result<ModelMetadata>> + Send;
    fn model_config(&self, name: &str, version: &str) -> impl Future<Output = Result<Arc<ModelConfig>>> + Send;
    /// Statistics of one model version, all versions of a model, or (empty name) every model.
    fn statistics(&self, name: &str, version: &str) -> impl Future<Output = Result<Vec<VersionStats>>> + Send;
    fn repository_index(&self, ready_only: bool) -> impl Future<Output = Result<Vec<IndexEntry>>> + Send;
    fn load_model(&self, name: &str, options: LoadOptions) -> impl Future<Output = Result<()>> + Send;
    fn unload_model(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Answers at once (before the body is decoded) when the request would be turned away for load.
    fn shed_early(&self, model: &str, version: &str) -> Result<()>;
    fn infer(&self, request: InferRequest) -> impl Future<Output = Result<InferResponse>> + Send;
    /// Whether request header (gRPC metadata) `name`, lower case, is copied into the request's
    /// parameters, as Triton's `--http-header-forward-pattern` does (the router's A/B splits).
    fn forwards_header(&self, _name: &str) -> bool {
        false
    }
}
