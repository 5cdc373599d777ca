//! The engine trait every model runtime implements, and the backend trait that
//! recognises and loads model files into engines.

use crate::error::Result;
use crate::tensor::Tensor;
use flotilla_proto::inference::ModelConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Phase boundaries an engine marks while running a batch, for Triton's
/// compute_input / compute_infer / compute_output statistics.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    pub start: Instant,
    pub input_done: Option<Instant>,
    pub infer_done: Option<Instant>,
}

impl Phases {
    pub fn start() -> Self {
        Self { start: Instant::now(), input_done: None, infer_done: None }
    }
    pub fn input_done(&mut self) {
        self.input_done = Some(Instant::now());
    }
    pub fn infer_done(&mut self) {
        self.infer_done = Some(Instant::now());
    }
}

/// A loaded model version that can run batches. Shared by all instances of a
/// version; implementations must be cheap to call from several threads.
pub trait Engine: Send + Sync + 'static {
    /// Runs one batch. Inputs were already checked against the configuration:
    /// every required input is present once with the configured datatype and a
    /// shape that matches the configured dims (batch dimension first when the
    /// model batches). Returns every output the model produces, named.
    fn infer(&self, inputs: &[Tensor], phases: &mut Phases) -> Result<Vec<Tensor>>;
}

/// Options that shape how backends complete a configuration.
#[derive(Debug, Clone)]
pub struct AutocompleteOptions {
    /// max_batch_size given to models whose inputs and outputs all have a
    /// variable first dimension (Triton's `default-max-batch-size`).
    pub default_max_batch_size: i32,
}

impl Default for AutocompleteOptions {
    fn default() -> Self {
        Self { default_max_batch_size: 4 }
    }
}

/// A model runtime: recognises its models and loads them.
pub trait Backend: Send + Sync + 'static {
    /// Short name, used as the config `backend` when completing a configuration.
    fn name(&self) -> &'static str;
    /// What runs the models, for logs (default: `name`; tract answers to the `onnxruntime`
    /// backend name but runs on tract).
    fn runtime(&self) -> &'static str {
        self.name()
    }
    /// The config `platform` this backend reports (e.g. `onnxruntime_onnx`).
    fn platform(&self) -> &'static str;
    /// Whether this backend serves a model whose configuration names `platform`/`backend`.
    fn serves(&self, config: &ModelConfig) -> bool;
    /// Model file names looked for in a version folder when the config names none, in order of preference.
    fn default_filenames(&self) -> &'static [&'static str];
    /// Whether a version folder holds a model this backend loads, for models whose
    /// configuration names no platform or backend (default: one of its default files exists).
    fn recognises(&self, version_dir: &Path) -> bool {
        self.default_filenames().iter().any(|f| version_dir.join(f).is_file())
    }
    /// Fills in inputs, outputs and max_batch_size that the configuration leaves out, from the model file.
    fn autocomplete(&self, config: &mut ModelConfig, model_file: &Path, options: &AutocompleteOptions) -> Result<()>;
    /// Loads the model file into an engine.
    fn load(&self, config: &ModelConfig, model_file: &Path) -> Result<Arc<dyn Engine>>;
}
