//! Logs and traces. Logs go to stderr as text (colour only on a terminal, never with
//! `NO_COLOR`) or JSON, filtered by `--log-level`. With `--otlp-endpoint`, the request spans
//! of [`flotilla_core::trace`] are exported over OTLP/HTTP (protobuf) by OpenTelemetry's batch
//! exporter; the log filter does not apply to them, so traces and logs are tuned apart.
//!
//! Set up before the async runtime starts: the exporter's blocking HTTP client must not be
//! made or dropped on the runtime.

use crate::config::{LogArgs, LogFormat};
use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::time::Duration;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// What must be flushed before the process exits.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (at most a few seconds), then stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("flotilla: OTLP exporter did not shut down cleanly: {e}");
            }
        }
    }
}

/// Logs and, with an OTLP endpoint, traces for `serve` and `route`.
pub fn init(args: &LogArgs, default_service: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("--log-level {:?} is not a level or filter directive", args.log_level))?;
    let mut layers = vec![log_layer(filter, args.log_format)];
    let provider = match &args.otlp_endpoint {
        Some(endpoint) => {
            let service = args.otlp_service_name.clone().unwrap_or_else(|| default_service.to_string());
            let provider = provider(endpoint, &service, args.otlp_sample_ratio)?;
            opentelemetry::global::set_tracer_provider(provider.clone());
            let tracer = provider.tracer("flotilla");
            let spans = Targets::new().with_target(flotilla_core::trace::TARGET, tracing::Level::DEBUG);
            layers.push(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans).boxed());
            Some(provider)
        }
        None => None,
    };
    tracing_subscriber::registry().with(layers).init();
    if let (Some(endpoint), Some(_)) = (&args.otlp_endpoint, &provider) {
        tracing::info!(endpoint = %traces_url(endpoint), sample_ratio = args.otlp_sample_ratio, "exporting traces over OTLP");
    }
    Ok(Telemetry { provider })
}

/// Logs only, for the one-shot subcommands (`features`, `profile`): `FLOTILLA_LOG_LEVEL` or `default`.
pub fn init_cli(default: &str) -> Telemetry {
    let filter = EnvFilter::try_from_env("FLOTILLA_LOG_LEVEL").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::registry().with(vec![log_layer(filter, LogFormat::Text)]).init();
    Telemetry { provider: None }
}

fn log_layer(filter: EnvFilter, format: LogFormat) -> BoxedLayer {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
        LogFormat::Text => layer.with_ansi(colour).with_filter(filter).boxed(),
    }
}

/// The collector's traces URL: `/v1/traces` is added to an endpoint given without a path.
fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

fn provider(endpoint: &str, service: &str, ratio: f64) -> anyhow::Result<SdkTracerProvider> {
    if !endpoint.starts_with("http://") {
        anyhow::bail!(
            "--otlp-endpoint {endpoint:?}: expected an OTLP/HTTP collector address http://HOST:PORT \
             (TLS to the collector is not built in: run a local collector or agent)"
        );
    }
    if !(0.0..=1.0).contains(&ratio) {
        anyhow::bail!("--otlp-sample-ratio {ratio}: expected a number from 0 to 1");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint))
        .with_timeout(Duration::from_secs(5))
        .build()
        .with_context(|| format!("--otlp-endpoint {endpoint:?}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_string()).build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_only_when_none_is_given() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/custom/traces"), "http://c:4318/custom/traces");
    }
}
