//! Shared gRPC middleware: counts responses by method and grpc-status, and
//! times them, for every RPC without touching the handlers.

use flotilla_core::metrics::Metrics;
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use std::time::Instant;

/// A tower layer recording `flotilla_responses_total{protocol="grpc"}` and durations.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

/// Method label with bounded cardinality: known services keep their path.
fn endpoint(path: &str) -> String {
    let known = ["/inference.GRPCInferenceService/", "/grpc.health.v1.Health/", "/grpc.reflection."];
    if known.iter().any(|k| path.starts_with(k)) {
        path.to_string()
    } else {
        "other".to_string()
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let endpoint = endpoint(request.uri().path());
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            if let Ok(response) = &result {
                // Errors travel as trailers-only responses with grpc-status in the headers;
                // success puts it in the trailers, so no header means OK.
                let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0");
                metrics.responses.with_label_values(&["grpc", &endpoint, code]).inc();
            }
            metrics.response_duration.with_label_values(&["grpc", &endpoint]).observe(start.elapsed().as_secs_f64());
            result
        })
    }
}
