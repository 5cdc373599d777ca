//! One loaded ONNX model: a session per engine instance (ORT's `run` needs
//! exclusive access to its session), the options they were built with, and the
//! mapping between configured tensors and session inputs and outputs.

use crate::convert::{self, protocol_type};
use crate::library::Runtime;
use crate::{cast, options::Options};
use flotilla_core::config::{input_datatype, output_datatype};
use flotilla_core::engine::{Engine, Phases};
use flotilla_core::{DataType, Error, ModelConfig, Result, Tensor};
use ort::session::Session;
use ort::value::{DynValue, ValueType};
use parking_lot::{Mutex, MutexGuard};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

const CPU: &str = "CPUExecutionProvider";
const CUDA: &str = "CUDAExecutionProvider";

/// A session input: its name, the graph's datatype, and the configured reshape.
struct InputSpec {
    name: String,
    model: DataType,
    reshape: Option<Vec<i64>>,
}

/// A session output: its name, the configured datatype (if configured) and reshape.
struct OutputSpec {
    name: String,
    want: Option<DataType>,
    reshape: Option<Vec<i64>>,
}

/// An ONNX model loaded into ONNX Runtime sessions.
pub struct OrtEngine {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    batching: bool,
    inputs: Vec<InputSpec>,
    outputs: Vec<OutputSpec>,
    provider: &'static str,
}

fn load_error(file: &Path, e: impl std::fmt::Display) -> Error {
    Error::invalid(format!("{}: cannot load ONNX model into ONNX Runtime: {e}", file.display()))
}

/// A configured reshape without variable dims (those keep the request's shape).
fn fixed_reshape(reshape: Option<&flotilla_proto::inference::ModelTensorReshape>) -> Option<Vec<i64>> {
    reshape.map(|r| r.shape.clone()).filter(|s| s.iter().all(|d| *d >= 0))
}

fn tensor_type(name: &str, kind: &str, dtype: &ValueType, file: &Path) -> Result<DataType> {
    let ValueType::Tensor { ty, .. } = dtype else {
        return Err(load_error(file, format!("{kind} '{name}' is a {dtype}, not a tensor")));
    };
    protocol_type(*ty).ok_or_else(|| {
        load_error(file, format!("{kind} '{name}' has ONNX element type {ty}, which the protocol has no datatype for"))
    })
}

// === impl OrtEngine ===

impl OrtEngine {
    /// Creates the sessions for `config` (one per instance) and checks the configuration against the graph.
    pub fn load(runtime: &Runtime, config: &ModelConfig, file: &Path, default_instances: usize) -> Result<Self> {
        if !file.is_file() {
            return Err(Error::invalid(format!("{}: model file not found", file.display())));
        }
        let options = Options::from_config(config, default_instances)?;
        let (first, provider) = first_session(runtime, config, file, &options)?;
        let engine = Self::describe(first, config, file, provider)?;
        let mut sessions = engine.sessions;
        for _ in 1..options.sessions {
            let device = (provider == CUDA).then_some(options.gpu_device).flatten();
            sessions.push(Mutex::new(build_session(runtime, file, &options, device).map_err(|e| load_error(file, e))?));
        }
        tracing::info!(
            model = %config.name,
            provider,
            sessions = options.sessions,
            intra_op_threads = options.intra_op_threads,
            inter_op_threads = options.inter_op_threads.unwrap_or(0),
            spinning = options.spinning,
            "onnxruntime: model runs on {provider}"
        );
        Ok(Self { sessions, ..engine })
    }

    /// Matches the session's inputs and outputs with the configuration.
    fn describe(session: Session, config: &ModelConfig, file: &Path, provider: &'static str) -> Result<Self> {
        let mut inputs = Vec::new();
        for outlet in session.inputs() {
            let name = outlet.name();
            let model = tensor_type(name, "input", outlet.dtype(), file)?;
            let Some(c) = config.input.iter().find(|c| c.name == name) else {
                return Err(load_error(
                    file,
                    format!("model input '{name}' is not declared in the configuration's inputs"),
                ));
            };
            let given = input_datatype(c);
            if !cast::castable(given, model) {
                return Err(load_error(
                    file,
                    format!("input '{name}' is configured as {given} but the model takes {model}"),
                ));
            }
            inputs.push(InputSpec { name: name.to_string(), model, reshape: fixed_reshape(c.reshape.as_ref()) });
        }
        if let Some(c) = config.input.iter().find(|c| !inputs.iter().any(|i| i.name == c.name)) {
            return Err(load_error(file, format!("configured input '{}' is not an input of the ONNX graph", c.name)));
        }
        let mut outputs = Vec::new();
        for outlet in session.outputs() {
            let name = outlet.name();
            let configured = config.output.iter().find(|c| c.name == name);
            if configured.is_none() && !matches!(outlet.dtype(), ValueType::Tensor { .. }) {
                // Sequences and maps (e.g. scikit-learn's ZipMap) only when asked for.
                continue;
            }
            let model = tensor_type(name, "output", outlet.dtype(), file)?;
            let want = configured.map(output_datatype);
            if let Some(want) = want.filter(|w| !cast::castable(model, *w)) {
                return Err(load_error(
                    file,
                    format!("output '{name}' is configured as {want} but the model produces {model}"),
                ));
            }
            let reshape = configured.and_then(|c| fixed_reshape(c.reshape.as_ref()));
            outputs.push(OutputSpec { name: name.to_string(), want, reshape });
        }
        if let Some(c) = config.output.iter().find(|c| !outputs.iter().any(|o| o.name == c.name)) {
            return Err(load_error(file, format!("configured output '{}' is not an output of the ONNX graph", c.name)));
        }
        Ok(Self {
            sessions: vec![Mutex::new(session)],
            next: AtomicUsize::new(0),
            batching: config.max_batch_size > 0,
            inputs,
            outputs,
            provider,
        })
    }

    /// The execution provider the sessions run on (`CPUExecutionProvider` or `CUDAExecutionProvider`).
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Number of sessions (one per instance).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// A free session, else the next one in turn (each instance thread usually finds its own free).
    fn session(&self) -> MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Some(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        self.sessions[start].lock()
    }

    /// The shape a tensor is given with: the configured reshape after the batch dimension, else its own.
    fn shape(&self, reshape: Option<&Vec<i64>>, own: &[i64]) -> Vec<i64> {
        match reshape {
            Some(dims) if self.batching => own.iter().take(1).chain(dims).copied().collect(),
            Some(dims) => dims.clone(),
            None => own.to_vec(),
        }
    }
}

/// Builds the first session; for KIND_GPU, on CUDA when the library and machine allow, else on CPU (logged).
fn first_session(
    runtime: &Runtime,
    config: &ModelConfig,
    file: &Path,
    options: &Options,
) -> Result<(Session, &'static str)> {
    if let Some(device) = options.gpu_device {
        if !runtime.has_cuda() {
            tracing::warn!(
                model = %config.name,
                library = %runtime.path().display(),
                "onnxruntime: instance_group asks for KIND_GPU but this ONNX Runtime has no CUDA execution provider \
                 (install onnxruntime-gpu and point --onnxruntime-lib at its library); falling back to CPU"
            );
        } else {
            match build_session(runtime, file, options, Some(device)) {
                Ok(session) => return Ok((session, CUDA)),
                Err(e) => tracing::warn!(
                    model = %config.name,
                    device,
                    error = %e,
                    "onnxruntime: instance_group asks for KIND_GPU but the CUDA execution provider did not start; falling back to CPU"
                ),
            }
        }
    }
    let session = build_session(runtime, file, options, None).map_err(|e| load_error(file, e))?;
    Ok((session, CPU))
}

fn build_session(
    runtime: &Runtime,
    file: &Path,
    options: &Options,
    cuda_device: Option<i32>,
) -> Result<Session, String> {
    let text = |e: ort::Error<ort::session::builder::SessionBuilder>| e.to_string();
    let mut builder = Session::builder(&runtime.environment)
        .map_err(|e| e.to_string())?
        .with_log_level(ort::logging::LogLevel::Warning)
        .map_err(text)?
        .with_intra_threads(options.intra_op_threads)
        .map_err(text)?
        .with_intra_op_spinning(options.spinning)
        .map_err(text)?
        .with_inter_op_spinning(options.spinning)
        .map_err(text)?;
    if let Some(n) = options.inter_op_threads {
        builder = builder.with_inter_threads(n).map_err(text)?;
    }
    if options.parallel_execution {
        builder = builder.with_parallel_execution(true).map_err(text)?;
    }
    if let Some(device) = cuda_device {
        let cuda = ort::ep::CUDA::default().with_device_id(device).build().error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(text)?;
    }
    builder.commit_from_file(file).map_err(|e| e.to_string())
}

fn run_error(e: ort::Error) -> Error {
    match e.code() {
        ort::ErrorCode::InvalidArgument => Error::invalid(format!("onnxruntime: {e}")),
        _ => Error::internal(format!("onnxruntime: {e}")),
    }
}

impl Engine for OrtEngine {
    fn infer(&self, inputs: &[Tensor], phases: &mut Phases) -> Result<Vec<Tensor>> {
        let mut values = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let t = inputs
                .iter()
                .find(|t| t.name == spec.name)
                .ok_or_else(|| Error::invalid(format!("missing input '{}'", spec.name)))?;
            let shape = self.shape(spec.reshape.as_ref(), &t.shape);
            values.push((spec.name.as_str(), convert::to_value(t, spec.model, shape)?));
        }
        phases.input_done();
        let produced: Vec<DynValue> = {
            let mut session = self.session();
            let mut outputs = session.run(values).map_err(run_error)?;
            self.outputs
                .iter()
                .map(|o| {
                    outputs
                        .remove(o.name.as_str())
                        .ok_or_else(|| Error::internal(format!("onnxruntime did not produce output '{}'", o.name)))
                })
                .collect::<Result<_>>()?
        };
        phases.infer_done();
        produced
            .into_iter()
            .zip(&self.outputs)
            .map(|(value, spec)| {
                let shape = spec.reshape.as_ref().map(|dims| {
                    let own = match value.dtype() {
                        ValueType::Tensor { shape, .. } => shape.to_vec(),
                        _ => Vec::new(),
                    };
                    self.shape(Some(dims), &own)
                });
                convert::from_value(&spec.name, value, spec.want, shape)
            })
            .collect()
    }
}
