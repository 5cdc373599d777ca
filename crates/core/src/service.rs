//! The service layer: every protocol operation, once. HTTP and gRPC adapters
//! decode into these calls and encode what they return; neither holds logic.

use crate::api::{Api, Readiness};
use crate::classification::classify;
use crate::config::{self, full_shape, input_datatype, output_datatype};
use crate::enrich::Enricher;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Metrics, VersionMetrics};
use crate::observe::{Observer, Recorder, Served};
use crate::protocol::{self, LoadOptions};
use crate::repository::{IndexEntry, ModelVersion, Repository};
use crate::request::{InferRequest, InferResponse, Parameters};
use crate::scheduler::Admission;
use crate::stats::{BatchTiming, StatsSnapshot};
use crate::tensor::Tensor;
use flotilla_proto::inference::ModelConfig;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Protocol extensions Flotilla implements, as reported in server metadata.
pub const EXTENSIONS: &[&str] = &[
    "classification",
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
];

/// Server-wide options of the service layer.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub server_name: String,
    pub server_version: String,
    /// Ready only when every model the server was asked to serve is ready (Triton's default).
    pub strict_readiness: bool,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            server_name: "flotilla".into(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            strict_readiness: true,
        }
    }
}

/// Tensor metadata (name, datatype, full shape with -1 for variable dims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Model metadata as the protocol reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// Statistics of one model version.
#[derive(Debug, Clone)]
pub struct VersionStats {
    pub name: String,
    pub version: String,
    pub stats: StatsSnapshot,
}

/// The service shared by the HTTP and gRPC adapters.
pub struct Service {
    pub repository: Arc<Repository>,
    pub metrics: Metrics,
    options: ServiceOptions,
    draining: AtomicBool,
    /// Set by a preemption notice: new requests are answered DRAINING (never run) so a router
    /// sends them to another worker.
    refusing: AtomicBool,
    /// Inference requests in the service now, every model.
    in_flight: AtomicUsize,
    enricher: Option<Arc<dyn Enricher>>,
    observer: Option<Arc<dyn Observer>>,
    recorder: Option<Arc<dyn Recorder>>,
}

// === impl Service ===

impl Service {
    pub fn new(repository: Arc<Repository>, metrics: Metrics, options: ServiceOptions) -> Self {
        Self {
            repository,
            metrics,
            options,
            draining: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            enricher: None,
            observer: None,
            recorder: None,
        }
    }

    /// Runs `enricher` on every inference request before its inputs are checked.
    pub fn with_enricher(mut self, enricher: Arc<dyn Enricher>) -> Self {
        self.enricher = Some(enricher);
        self
    }

    /// Hands every successful request's inputs and outputs to `observer` (drift monitoring).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Hands every request that reaches its model (failed ones too) to `recorder` (the payload log).
    pub fn with_recorder(mut self, recorder: Arc<dyn Recorder>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    pub fn options(&self) -> &ServiceOptions {
        &self.options
    }

    pub fn live(&self) -> bool {
        true
    }

    /// Ready to take inference traffic: not draining and, with strict readiness, every wanted model ready.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && (!self.options.strict_readiness || self.repository.all_ready())
    }

    /// Marks the server as shutting down: readiness turns false, in-flight requests finish.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether a preemption notice was taken (see [`Service::preempt`]).
    pub fn preempted(&self) -> bool {
        self.refusing.load(Ordering::Relaxed)
    }

    /// A preemption notice: readiness turns false, new inference requests are answered
    /// DRAINING without running, and queued requests that would not finish by `deadline` are
    /// handed back the same way (a router retries them on another worker). Requests running or
    /// queued early enough finish here. Returns how many requests were handed back.
    pub fn preempt(&self, deadline: Instant) -> usize {
        self.start_draining();
        self.refusing.store(true, Ordering::Relaxed);
        self.hand_back(deadline)
    }

    /// Hands back the queued requests that would not finish by `deadline` (all of them once it
    /// has passed); returns how many.
    pub fn hand_back(&self, deadline: Instant) -> usize {
        let loaded = self.repository.loaded();
        let mut n = 0;
        for model in loaded.values() {
            for mv in model.versions.values() {
                let label = format!("{}/{}", mv.name, mv.version_str);
                n += mv.scheduler.hand_back(deadline, || {
                    Error::draining(format!("model {label}: the server was preempted before this request ran"))
                });
            }
        }
        n
    }

    /// Inference requests in the service now (queued or running), every model.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Whether a model (version) is ready; an unknown model is not ready, with the error that says so.
    pub fn model_ready(&self, name: &str, version: &str) -> Readiness {
        match self.repository.get(name, version) {
            Ok(_) => Readiness::ready(),
            Err(e) => Readiness::not_ready(e),
        }
    }

    pub fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadata> {
        let mv = self.repository.get(name, version)?;
        let model = self.repository.model(name)?;
        let c = &mv.config;
        let meta = |n: &str, dt: crate::datatype::DataType, dims: &[i64]| TensorMeta {
            name: n.to_string(),
            datatype: dt.as_str().to_string(),
            shape: full_shape(c, dims),
        };
        Ok(ModelMetadata {
            name: name.to_string(),
            versions: model.versions.keys().map(u64::to_string).collect(),
            platform: if c.platform.is_empty() { c.backend.clone() } else { c.platform.clone() },
            inputs: c.input.iter().map(|i| meta(&i.name, input_datatype(i), &i.dims)).collect(),
            outputs: c.output.iter().map(|o| meta(&o.name, output_datatype(o), &o.dims)).collect(),
        })
    }

    pub fn model_config(&self, name: &str, version: &str) -> Result<Arc<ModelConfig>> {
        Ok(self.repository.get(name, version)?.config.clone())
    }

    /// Statistics for one model (all its versions, or one), or for every model when `name` is empty.
    pub fn statistics(&self, name: &str, version: &str) -> Result<Vec<VersionStats>> {
        let row = |mv: &ModelVersion| VersionStats {
            name: mv.name.clone(),
            version: mv.version_str.clone(),
            stats: mv.stats.snapshot(),
        };
        if name.is_empty() {
            let loaded = self.repository.loaded();
            let mut names: Vec<&String> = loaded.keys().collect();
            names.sort();
            return Ok(names.into_iter().flat_map(|n| loaded[n].versions.values().map(|v| row(v))).collect());
        }
        if !version.is_empty() {
            return Ok(vec![row(self.repository.get(name, version)?.as_ref())]);
        }
        Ok(self.repository.model(name)?.versions.values().map(|v| row(v)).collect())
    }

    pub fn repository_index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        self.repository.index(ready_only)
    }

    /// Loads or reloads a model; a `config` option overrides its config.pbtxt (Triton's load `config` parameter).
    pub async fn load_model(&self, name: &str, options: LoadOptions) -> Result<()> {
        let config = match options.config.as_deref() {
            Some(text) => Some(config::parse_json(text, &format!("failed to load '{name}': config parameter"))?),
            None => None,
        };
        self.repository.load(name, config).await
    }

    pub async fn unload_model(&self, name: &str) -> Result<()> {
        self.repository.unload(name).await
    }

    /// Sheds a request before its body is decoded when the model's queue is already full
    /// (the same answer the scheduler would give, for a fraction of the work). Unknown or
    /// unready models pass: `infer` reports those.
    pub fn shed_early(&self, model: &str, version: &str) -> Result<()> {
        let Ok(mv) = self.repository.get(model, version) else {
            return Ok(());
        };
        let Some(e) = mv.scheduler.full() else {
            return Ok(());
        };
        let m = self.version_metrics(&mv);
        m.failure.inc();
        m.rejected.inc();
        Err(e)
    }

    fn version_metrics<'a>(&self, mv: &'a ModelVersion) -> &'a VersionMetrics {
        mv.metrics.get_or_init(|| {
            VersionMetrics::new(&self.metrics, &mv.name, &mv.version_str, mv.scheduler.limit().is_some())
        })
    }

    /// Runs one inference request end to end.
    /// Its span (`infer`, under [`crate::trace::TARGET`]) is a trace's server stage: the
    /// enrichment, queue and execution stages are its children.
    #[tracing::instrument(target = "flotilla::trace", level = "debug", name = "infer", skip_all, fields(model = %request.model, version = %request.version, id = %request.id))]
    pub async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        let _in_service = InService::enter(&self.in_flight);
        if self.refusing.load(Ordering::Relaxed) {
            return Err(Error::draining(format!(
                "model '{}': the server was preempted and takes no new requests",
                request.model
            )));
        }
        let mv = self.repository.get(&request.model, &request.version)?;
        let m = self.version_metrics(&mv);
        let result = {
            let _in_flight = InFlight::enter(&m.in_flight);
            match self.recorder.as_ref().and_then(|r| r.recording(&mv)) {
                None => self.infer_on(&mv, m, request, started, None).await,
                Some(recording) => {
                    let id = request.id.clone();
                    let mut capture = Capture::default();
                    let result = self.infer_on(&mv, m, request, started, Some(&mut capture)).await;
                    if recording.keeps(result.is_err()) {
                        let latency = started.elapsed();
                        recording.record(Served {
                            id: if id.is_empty() { generated_id() } else { id },
                            started: std::time::SystemTime::now().checked_sub(latency).unwrap_or(std::time::UNIX_EPOCH),
                            latency,
                            trace_id: crate::trace::current_trace_id(),
                            inputs: capture.inputs,
                            outputs: match &result {
                                Ok(_) => Ok(capture.outputs),
                                Err(e) => Err(e.clone()),
                            },
                        });
                    }
                    result
                }
            }
        };
        m.queue_depth.set(mv.scheduler.queued() as i64);
        if let (Some(gauge), Some(limit)) = (&m.concurrency_limit, mv.scheduler.limit()) {
            gauge.set(limit as i64);
        }
        match result.as_ref().map_err(|e| e.kind) {
            Ok(_) => m.success.inc(),
            Err(kind) => {
                m.failure.inc();
                match kind {
                    ErrorKind::ResourceExhausted => m.rejected.inc(),
                    ErrorKind::DeadlineExceeded => m.timed_out.inc(),
                    _ => {}
                }
            }
        }
        m.request_duration.observe(started.elapsed().as_secs_f64());
        result
    }

    async fn infer_on(
        &self,
        mv: &ModelVersion,
        m: &VersionMetrics,
        mut request: InferRequest,
        started: Instant,
        mut capture: Option<&mut Capture>,
    ) -> Result<InferResponse> {
        if let Some(enricher) = &self.enricher {
            let span = tracing::debug_span!(target: crate::trace::TARGET, "enrich");
            let enriched = enricher.enrich(mv, &mut request).instrument(span).await;
            if let Err(e) = enriched {
                if let Some(c) = capture {
                    c.inputs = request.inputs;
                }
                return Err(e);
            }
        }
        if let Some(c) = capture.as_deref_mut() {
            c.inputs = request.inputs.clone();
        }
        let config = &mv.config;
        let observer = self.observer.as_ref().filter(|o| o.wants(mv));
        let observed_inputs = observer.map(|_| request.inputs.clone());
        let (inputs, batch) = prepare_inputs(config, request.inputs)?;
        for o in &request.outputs {
            if !config.output.iter().any(|c| c.name == o.name) {
                return Err(Error::invalid(format!(
                    "unknown output '{}' requested; model '{}' has outputs {}",
                    o.name,
                    mv.name,
                    names(config.output.iter().map(|o| o.name.as_str()))
                )));
            }
            if o.classification == Some(0) {
                return Err(Error::invalid(format!("output '{}': classification count must be > 0", o.name)));
            }
        }
        let admission = admission(&request.parameters, started)?;
        let done = mv.scheduler.run(inputs, admission).await;
        trace_scheduled(&done);
        if done.instance_replaced && done.records_batch {
            m.instance_restarts.inc();
        }
        let queue = done.phases.start.saturating_duration_since(done.enqueued);
        let mut outputs = match done.outputs {
            Ok(o) => o,
            Err(e) => {
                mv.stats.request_failure(started.elapsed());
                return Err(e);
            }
        };
        if done.records_batch {
            let rows = Some(done.batch_rows as i64);
            mv.stats.execution(batch_timing(&done.phases, done.finished, Duration::ZERO, rows));
            m.batch_size.observe(done.batch_rows as f64);
        }
        if let (Some(o), Some(observed)) = (observer, observed_inputs) {
            o.observe(mv, observed, outputs.clone());
        }
        if let Some(c) = capture {
            c.outputs = outputs.clone();
        }
        let output_start = Instant::now();
        let result = self.finish_outputs(mv, &mut outputs, &request.outputs, batch);
        let output_extra = output_start.elapsed();
        let timing = batch_timing(&done.phases, done.finished, output_extra, batch);
        match result {
            Ok(outputs) => {
                mv.stats.request_success(started.elapsed(), queue, timing);
                m.queue_duration.observe(queue.as_secs_f64());
                m.compute_input.observe(timing.compute_input.as_secs_f64());
                m.compute_infer.observe(timing.compute_infer.as_secs_f64());
                m.compute_output.observe(timing.compute_output.as_secs_f64());
                Ok(InferResponse {
                    model_name: mv.name.clone(),
                    model_version: mv.version_str.clone(),
                    id: request.id,
                    parameters: Default::default(),
                    outputs,
                })
            }
            Err(e) => {
                mv.stats.request_failure(started.elapsed());
                Err(e)
            }
        }
    }

    fn finish_outputs(
        &self,
        mv: &ModelVersion,
        produced: &mut Vec<Tensor>,
        requested: &[crate::request::RequestedOutput],
        batch: Option<i64>,
    ) -> Result<Vec<Tensor>> {
        let config = &mv.config;
        for t in produced.iter_mut() {
            let Some(c) = config.output.iter().find(|c| c.name == t.name) else {
                continue;
            };
            let want = output_datatype(c);
            if t.datatype != want {
                return Err(Error::internal(format!(
                    "model '{}' produced output '{}' as {} but its configuration says {}",
                    mv.name, t.name, t.datatype, want
                )));
            }
            if c.reshape.is_some() && c.dims.iter().all(|d| *d >= 0) {
                t.shape = match batch {
                    Some(b) => std::iter::once(b).chain(c.dims.iter().copied()).collect(),
                    None => c.dims.clone(),
                };
            }
        }
        let take = |name: &str, produced: &mut Vec<Tensor>| -> Result<Tensor> {
            let pos = produced
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| Error::internal(format!("model '{}' did not produce output '{name}'", mv.name)))?;
            Ok(produced.swap_remove(pos))
        };
        if requested.is_empty() {
            return config.output.iter().map(|c| take(&c.name, produced)).collect();
        }
        let mut out = Vec::with_capacity(requested.len());
        for r in requested {
            let mut t = take(&r.name, produced)?;
            if let Some(k) = r.classification {
                let labels = mv.labels.get(&r.name).map(|l| l.as_slice());
                t = classify(&t, batch.is_some(), k, labels)?;
            }
            t.parameters = r.parameters.clone();
            out.push(t);
        }
        Ok(out)
    }
}

/// The request's queue wait (admission included) and its batch's execution, as trace stages.
fn trace_scheduled(done: &crate::scheduler::Completed) {
    use opentelemetry::KeyValue;
    let ran = done.batch_rows > 0;
    let queued_until = if ran { done.phases.start } else { done.finished };
    let outcome = match &done.outputs {
        Ok(_) => "ok",
        Err(e) => e.kind.as_str(),
    };
    crate::trace::past_stage("queue", done.enqueued, queued_until, || vec![KeyValue::new("outcome", outcome)]);
    if ran {
        let rows = done.batch_rows as i64;
        let attributes = || vec![KeyValue::new("batch_rows", rows), KeyValue::new("outcome", outcome)];
        crate::trace::past_stage("execute", done.phases.start, done.finished, attributes);
    }
}

fn batch_timing(phases: &crate::engine::Phases, finished: Instant, extra: Duration, batch: Option<i64>) -> BatchTiming {
    let input_done = phases.input_done.unwrap_or(phases.start);
    let infer_done = phases.infer_done.unwrap_or(finished).max(input_done);
    BatchTiming {
        batch_size: batch.unwrap_or(1).max(1) as u64,
        compute_input: input_done.saturating_duration_since(phases.start),
        compute_infer: infer_done.saturating_duration_since(input_done),
        compute_output: finished.saturating_duration_since(infer_done) + extra,
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = it.map(|n| format!("'{n}'")).collect();
    format!("[{}]", v.join(", "))
}

/// Checks inputs against the configuration and orders them as configured.
/// Returns the inputs (reshaped where the config says so) and the batch size.
pub fn prepare_inputs(config: &ModelConfig, mut given: Vec<Tensor>) -> Result<(Vec<Tensor>, Option<i64>)> {
    for (i, t) in given.iter().enumerate() {
        if given[..i].iter().any(|o| o.name == t.name) {
            return Err(Error::invalid(format!("input '{}' is given more than once", t.name)));
        }
        if !config.input.iter().any(|c| c.name == t.name) {
            return Err(Error::invalid(format!(
                "unknown input '{}'; model '{}' expects {}",
                t.name,
                config.name,
                names(config.input.iter().map(|c| c.name.as_str()))
            )));
        }
    }
    let batched = config.max_batch_size > 0;
    let mut batch: Option<i64> = None;
    let mut out = Vec::with_capacity(config.input.len());
    for c in &config.input {
        let Some(pos) = given.iter().position(|t| t.name == c.name) else {
            if c.optional {
                continue;
            }
            return Err(Error::invalid(format!(
                "missing input '{}' ({} with shape {:?}) for model '{}'",
                c.name,
                input_datatype(c),
                full_shape(config, &c.dims),
                config.name
            )));
        };
        let mut t = given.swap_remove(pos);
        let what = format!("input '{}'", t.name);
        let want = input_datatype(c);
        if t.datatype != want {
            return Err(Error::invalid(format!("{what}: datatype {} does not match the model's {want}", t.datatype)));
        }
        t.validate(&what)?;
        let item_shape = if batched {
            let Some(&b) = t.shape.first() else {
                return Err(Error::invalid(format!(
                    "{what}: shape {:?} has no batch dimension; expected {:?}",
                    t.shape,
                    full_shape(config, &c.dims)
                )));
            };
            if b < 1 || b > i64::from(config.max_batch_size) {
                return Err(Error::invalid(format!(
                    "{what}: batch size {b} is outside 1..={} (max_batch_size of model '{}')",
                    config.max_batch_size, config.name
                )));
            }
            if let Some(prev) = batch.filter(|p| *p != b) {
                return Err(Error::invalid(format!(
                    "{what}: batch size {b} differs from the other inputs' batch size {prev}"
                )));
            }
            batch = Some(b);
            &t.shape[1..]
        } else {
            &t.shape[..]
        };
        let dims_match = item_shape.len() == c.dims.len()
            && item_shape.iter().zip(&c.dims).all(|(got, want)| *want == -1 || got == want);
        if !dims_match {
            return Err(Error::invalid(format!(
                "{what}: shape {:?} does not match the model's {:?}",
                t.shape,
                full_shape(config, &c.dims)
            )));
        }
        if let Some(r) = &c.reshape {
            let mut shape: Vec<i64> = batch.into_iter().collect();
            shape.extend_from_slice(&r.shape);
            if r.shape.iter().all(|d| *d >= 0) {
                t.shape = shape;
            }
        }
        out.push(t);
    }
    Ok((out, batch))
}

/// The scheduling asks of a request: its `priority` (1 is highest) and `timeout` (µs, as
/// Triton's clients send it) parameters.
fn admission(parameters: &Parameters, started: Instant) -> Result<Admission> {
    protocol::idempotent(parameters)?;
    Ok(Admission { priority: protocol::priority(parameters)?, timeout_us: protocol::timeout_us(parameters)?, started })
}

/// Counts a request in the service-wide in-flight count until it is answered or abandoned.
struct InService<'a>(&'a AtomicUsize);

impl<'a> InService<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for InService<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a request in the in-flight gauge until it is dropped, answered or abandoned.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Api for Service ===

impl Api for Service {
    fn options(&self) -> &ServiceOptions {
        &self.options
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn live(&self) -> bool {
        Service::live(self)
    }
    fn ready(&self) -> bool {
        Service::ready(self)
    }
    async fn model_ready(&self, name: &str, version: &str) -> Readiness {
        Service::model_ready(self, name, version)
    }
    async fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadata> {
        Service::model_metadata(self, name, version)
    }
    async fn model_config(&self, name: &str, version: &str) -> Result<Arc<ModelConfig>> {
        Service::model_config(self, name, version)
    }
    async fn statistics(&self, name: &str, version: &str) -> Result<Vec<VersionStats>> {
        Service::statistics(self, name, version)
    }
    async fn repository_index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        Service::repository_index(self, ready_only)
    }
    async fn load_model(&self, name: &str, options: LoadOptions) -> Result<()> {
        Service::load_model(self, name, options).await
    }
    async fn unload_model(&self, name: &str) -> Result<()> {
        Service::unload_model(self, name).await
    }
    fn shed_early(&self, model: &str, version: &str) -> Result<()> {
        Service::shed_early(self, model, version)
    }
    async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        Service::infer(self, request).await
    }
}

/// What the [`Recorder`] keeps of a request while it runs.
#[derive(Default)]
struct Capture {
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

/// An id for a request that came without one: unique in this process and across restarts.
fn generated_id() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    format!("flotilla-{start:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
