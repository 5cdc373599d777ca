//! ONNX engine through ONNX Runtime, loaded at run time from a shared library
//! (no download, no link-time dependency).
//!
//! - [`library`]: finds `libonnxruntime` (`--onnxruntime-lib`, `ORT_DYLIB_PATH`,
//!   a Python `onnxruntime` wheel in a virtual environment) and loads it once.
//! - [`OrtBackend`]: serves `platform: "onnxruntime_onnx"` / `backend: "onnxruntime"`
//!   and config-less `model.onnx` folders; `backend: "tract"` is left to tract.
//!   Completes configurations from the ONNX graph exactly as the tract engine does.
//! - [`OrtEngine`] (`engine`): one session per instance, CPU or CUDA
//!   (`KIND_GPU`, falling back to CPU), threads from `parameters` (`options`).
//! - `convert`, `cast`: protocol tensors ↔ ORT values without needless copies.
#![forbid(unsafe_code)]

mod cast;
mod convert;
mod engine;
pub mod library;
mod options;

pub use engine::OrtEngine;
pub use library::{LoadError, Runtime};
pub use options::Options;

use flotilla_core::engine::{AutocompleteOptions, Backend, Engine};
use flotilla_core::{ModelConfig, Result};
use std::path::Path;
use std::sync::Arc;

/// Loads ONNX models into ONNX Runtime sessions.
#[derive(Debug, Clone)]
pub struct OrtBackend {
    runtime: Arc<Runtime>,
    default_instances: usize,
}

impl OrtBackend {
    /// `default_instances`: engine instances of a model whose config has no instance_group
    /// (one session each; intra-op threads default to cores / instances).
    pub fn new(runtime: Arc<Runtime>, default_instances: usize) -> Self {
        Self { runtime, default_instances: default_instances.max(1) }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }
}

// === impl OrtBackend ===

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn platform(&self) -> &'static str {
        "onnxruntime_onnx"
    }

    /// ONNX platforms and backends, unless the config asks for tract (`backend: "tract"`).
    fn serves(&self, config: &ModelConfig) -> bool {
        let platform_ok = matches!(config.platform.as_str(), "" | "onnxruntime_onnx" | "onnx");
        let backend_ok = matches!(config.backend.as_str(), "" | "onnxruntime" | "onnx");
        platform_ok && backend_ok && !(config.platform.is_empty() && config.backend.is_empty())
    }

    fn default_filenames(&self) -> &'static [&'static str] {
        &["model.onnx"]
    }

    fn autocomplete(&self, config: &mut ModelConfig, model_file: &Path, options: &AutocompleteOptions) -> Result<()> {
        flotilla_tract::TractBackend.autocomplete(config, model_file, options)
    }

    fn load(&self, config: &ModelConfig, model_file: &Path) -> Result<Arc<dyn Engine>> {
        let engine = OrtEngine::load(&self.runtime, config, model_file, self.default_instances)?;
        Ok(Arc::new(engine))
    }
}

#[cfg(test)]
mod tests;
