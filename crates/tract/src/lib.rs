//! ONNX engine through `tract` (pure Rust, always built).
//!
//! - [`TractBackend`] recognises `model.onnx` (platform `onnxruntime_onnx`,
//!   backend `onnxruntime`/`tract`), completes a missing configuration from the
//!   ONNX graph as Triton does, and loads the model with a symbolic batch
//!   dimension so one optimised plan serves every batch size.
//! - [`TractEngine`] converts protocol tensors to tract tensors, runs the plan
//!   and converts the outputs back.
#![forbid(unsafe_code)]

mod autocomplete;
mod convert;

use flotilla_core::config::{input_datatype, output_datatype};
use flotilla_core::engine::{AutocompleteOptions, Backend, Engine, Phases};
use flotilla_core::{Error, ModelConfig, Result, Tensor};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::*;

/// Loads ONNX models into tract plans.
#[derive(Debug, Default, Clone, Copy)]
pub struct TractBackend;

/// One loaded ONNX model: an optimised plan plus the mapping between
/// configuration tensor names and plan positions.
pub struct TractEngine {
    plan: Arc<TypedSimplePlan>,
    /// For each plan input, in plan order: the config input name.
    input_names: Vec<String>,
    /// For each plan output, in plan order: (name, configured datatype if the config names it).
    outputs: Vec<(String, Option<flotilla_core::DataType>)>,
}

// === impl TractBackend ===

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn runtime(&self) -> &'static str {
        "tract"
    }

    fn platform(&self) -> &'static str {
        "onnxruntime_onnx"
    }

    fn serves(&self, config: &ModelConfig) -> bool {
        matches!(config.platform.as_str(), "onnxruntime_onnx" | "onnx")
            || matches!(config.backend.as_str(), "onnxruntime" | "onnx" | "tract")
    }

    fn default_filenames(&self) -> &'static [&'static str] {
        &["model.onnx"]
    }

    fn autocomplete(&self, config: &mut ModelConfig, model_file: &Path, options: &AutocompleteOptions) -> Result<()> {
        autocomplete::complete(config, model_file, options)
    }

    fn load(&self, config: &ModelConfig, model_file: &Path) -> Result<Arc<dyn Engine>> {
        let engine = TractEngine::load(config, model_file)?;
        Ok(Arc::new(engine))
    }
}

fn load_error(file: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{}: cannot load ONNX model: {e:#}", file.display()))
}

// === impl TractEngine ===

impl TractEngine {
    pub fn load(config: &ModelConfig, file: &Path) -> Result<Self> {
        if !file.exists() {
            return Err(Error::invalid(format!("{}: model file not found", file.display())));
        }
        let mut model = tract_onnx::onnx().model_for_path(file).map_err(|e| load_error(file, e))?;
        let batch = model.sym("N");
        let mut input_names = Vec::new();
        let plan_inputs: Vec<String> = model
            .input_outlets()
            .map_err(|e| load_error(file, e))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        for (ix, name) in plan_inputs.iter().enumerate() {
            let Some(c) = config.input.iter().find(|c| &c.name == name) else {
                return Err(load_error(
                    file,
                    format!("model input '{name}' is not declared in the configuration's inputs"),
                ));
            };
            let dt = convert::tract_type(input_datatype(c)).map_err(|e| load_error(file, e))?;
            let mut shape: Vec<TDim> = Vec::new();
            if config.max_batch_size > 0 {
                shape.push(batch.clone().into());
            }
            let dims = c.reshape.as_ref().map(|r| r.shape.as_slice()).unwrap_or(&c.dims);
            for (j, d) in dims.iter().enumerate() {
                shape.push(if *d < 0 { model.sym(&format!("{name}_d{j}")).into() } else { TDim::from(*d) });
            }
            model.set_input_fact(ix, InferenceFact::dt_shape(dt, shape)).map_err(|e| load_error(file, e))?;
            input_names.push(name.clone());
        }
        for c in &config.input {
            if !plan_inputs.contains(&c.name) {
                return Err(load_error(
                    file,
                    format!("configured input '{}' is not an input of the ONNX graph", c.name),
                ));
            }
        }
        let mut outputs = Vec::new();
        for o in model.output_outlets().map_err(|e| load_error(file, e))?.to_vec() {
            let name = model.outlet_label(o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone());
            let dt = config.output.iter().find(|c| c.name == name).map(output_datatype);
            outputs.push((name, dt));
        }
        for c in &config.output {
            if !outputs.iter().any(|(n, _)| n == &c.name) {
                return Err(load_error(
                    file,
                    format!("configured output '{}' is not an output of the ONNX graph", c.name),
                ));
            }
        }
        let plan = model.into_optimized().and_then(|m| m.into_runnable()).map_err(|e| load_error(file, e))?;
        Ok(Self { plan, input_names, outputs })
    }
}

impl Engine for TractEngine {
    fn infer(&self, inputs: &[Tensor], phases: &mut Phases) -> Result<Vec<Tensor>> {
        let mut values: TVec<TValue> = TVec::with_capacity(self.input_names.len());
        for name in &self.input_names {
            let t = inputs
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| Error::invalid(format!("missing input '{name}'")))?;
            values.push(convert::to_tract(t)?.into());
        }
        phases.input_done();
        let results = self.plan.run(values).map_err(|e| Error::internal(format!("tract: {e:#}")))?;
        phases.infer_done();
        results
            .into_iter()
            .zip(&self.outputs)
            .map(|(value, (name, dt))| convert::from_tract(name, *dt, &value))
            .collect()
    }
}
