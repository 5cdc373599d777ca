//! Prometheus metrics: one registry, names prefixed `flotilla_`, histogram
//! buckets defined here once.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Latency buckets in seconds, shared by every duration histogram: 25 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Batch-size buckets (rows per execution), shared by every batch histogram.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0];

/// Every metric Flotilla exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Inference requests by model, version and outcome (`success` / `failure`).
    pub inference_requests: IntCounterVec,
    /// End-to-end inference request duration inside the service core.
    pub request_duration: HistogramVec,
    /// Time a request waited for an engine instance.
    pub queue_duration: HistogramVec,
    /// Engine phases: `compute_input`, `compute_infer`, `compute_output`.
    pub compute_duration: HistogramVec,
    /// 1 when a model version is ready to serve.
    pub model_ready: IntGaugeVec,
    /// Rows per engine execution (dynamic batching joins requests).
    pub batch_size: HistogramVec,
    /// Engine instances replaced after a panic.
    pub instance_restarts: IntCounterVec,
    /// The adaptive concurrency limit, for models that enable it.
    pub concurrency_limit: IntGaugeVec,
    /// Requests turned away because the queue was full, per model version.
    pub rejected: IntCounterVec,
    /// Requests whose deadline passed in the queue, per model version.
    pub timed_out: IntCounterVec,
    /// Requests waiting for an engine instance, per model version.
    pub queue_depth: IntGaugeVec,
    /// Requests in the service core, per model version.
    pub in_flight: IntGaugeVec,
    /// Protocol responses by protocol (`http`/`grpc`), endpoint and status code.
    pub responses: IntCounterVec,
    /// Protocol request duration by protocol and endpoint.
    pub response_duration: HistogramVec,
}

/// A histogram with the shared latency buckets.
pub fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
        .expect("static histogram definition is valid")
}

/// A counter family.
pub fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static counter definition is valid")
}

/// A gauge family.
pub fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("static gauge definition is valid")
}

/// A gauge family of fractional values (seconds, scores).
pub fn float_gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).expect("static gauge definition is valid")
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Self {
        let mv = &["model", "version"];
        let m = Self {
            registry: Registry::new(),
            inference_requests: counter(
                "flotilla_inference_requests_total",
                "Inference requests by model, version and outcome.",
                &["model", "version", "outcome"],
            ),
            request_duration: histogram(
                "flotilla_inference_request_duration_seconds",
                "Inference request duration in the service core (queue and compute), seconds.",
                mv,
            ),
            queue_duration: histogram(
                "flotilla_inference_queue_duration_seconds",
                "Time an inference request waited for an engine instance, seconds.",
                mv,
            ),
            compute_duration: histogram(
                "flotilla_inference_compute_duration_seconds",
                "Engine time by phase (compute_input, compute_infer, compute_output), seconds.",
                &["model", "version", "phase"],
            ),
            model_ready: IntGaugeVec::new(
                Opts::new("flotilla_model_ready", "1 when the model version is loaded and ready."),
                mv,
            )
            .expect("static gauge definition is valid"),
            batch_size: HistogramVec::new(
                HistogramOpts::new("flotilla_inference_batch_size", "Rows per engine execution.")
                    .buckets(BATCH_BUCKETS.to_vec()),
                mv,
            )
            .expect("static histogram definition is valid"),
            instance_restarts: counter(
                "flotilla_instance_restarts_total",
                "Engine instances replaced after their engine panicked.",
                mv,
            ),
            concurrency_limit: gauge(
                "flotilla_inference_concurrency_limit",
                "Adaptive concurrency limit (requests held, queued and running) of the model version.",
                mv,
            ),
            rejected: counter(
                "flotilla_inference_rejected_total",
                "Requests turned away at once because the model's queue was full (429 / RESOURCE_EXHAUSTED).",
                mv,
            ),
            timed_out: counter(
                "flotilla_inference_timeouts_total",
                "Requests whose deadline passed while they waited in the queue (504 / DEADLINE_EXCEEDED).",
                mv,
            ),
            queue_depth: gauge(
                "flotilla_inference_queue_depth",
                "Requests waiting for an engine instance of the model version.",
                mv,
            ),
            in_flight: gauge("flotilla_inference_in_flight", "Inference requests in the service core now.", mv),
            responses: counter(
                "flotilla_responses_total",
                "Protocol responses by protocol, endpoint and status code.",
                &["protocol", "endpoint", "code"],
            ),
            response_duration: histogram(
                "flotilla_response_duration_seconds",
                "Protocol request duration by protocol and endpoint, seconds.",
                &["protocol", "endpoint"],
            ),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.inference_requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.queue_duration.clone()),
            Box::new(m.compute_duration.clone()),
            Box::new(m.model_ready.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.instance_restarts.clone()),
            Box::new(m.concurrency_limit.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.timed_out.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.responses.clone()),
            Box::new(m.response_duration.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default()
    }
}

/// One model version's metric handles, resolved once so the request path
/// does not look labels up.
pub struct VersionMetrics {
    pub success: IntCounter,
    pub failure: IntCounter,
    pub request_duration: Histogram,
    pub queue_duration: Histogram,
    pub compute_input: Histogram,
    pub compute_infer: Histogram,
    pub compute_output: Histogram,
    pub batch_size: Histogram,
    pub instance_restarts: IntCounter,
    /// Only for versions with an adaptive concurrency limit.
    pub concurrency_limit: Option<IntGauge>,
    pub rejected: IntCounter,
    pub timed_out: IntCounter,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
}

impl VersionMetrics {
    pub fn new(m: &Metrics, model: &str, version: &str, adaptive: bool) -> Self {
        let l = [model, version];
        let phase = |p: &str| m.compute_duration.with_label_values(&[model, version, p]);
        Self {
            success: m.inference_requests.with_label_values(&[model, version, "success"]),
            failure: m.inference_requests.with_label_values(&[model, version, "failure"]),
            request_duration: m.request_duration.with_label_values(&l),
            queue_duration: m.queue_duration.with_label_values(&l),
            compute_input: phase("compute_input"),
            compute_infer: phase("compute_infer"),
            compute_output: phase("compute_output"),
            batch_size: m.batch_size.with_label_values(&l),
            instance_restarts: m.instance_restarts.with_label_values(&l),
            concurrency_limit: adaptive.then(|| m.concurrency_limit.with_label_values(&l)),
            rejected: m.rejected.with_label_values(&l),
            timed_out: m.timed_out.with_label_values(&l),
            queue_depth: m.queue_depth.with_label_values(&l),
            in_flight: m.in_flight.with_label_values(&l),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
