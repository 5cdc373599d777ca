//! Request traces across the fleet: the W3C `traceparent` a client sends becomes the parent of
//! the request's span, the router passes its own context on to the worker it picks, and each
//! stage of a request (decode, enrich, queue, execute, encode; the router's pick and attempts)
//! is a span. Spans go to OpenTelemetry when the binary is given an OTLP endpoint
//! (`--otlp-endpoint`); without one the spans here are disabled and cost a branch.
//!
//! The spans use the target [`TARGET`] at DEBUG level so that the log output (`--log-level`,
//! INFO by default) is unchanged; the OTLP layer enables that target on its own.

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use std::time::{Instant, SystemTime};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of request spans (what the OTLP layer exports).
pub const TARGET: &str = "flotilla::trace";

/// The W3C trace-context propagator (`traceparent`, `tracestate`).
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// A request's span in this process: `protocol` (`http`, `grpc`), `model` and `version`, the
/// child of the caller's `traceparent` when `header` finds one. Disabled unless OTLP is on.
pub fn request_span<'a>(
    protocol: &'static str,
    model: &str,
    version: &str,
    header: impl Fn(&str) -> Option<&'a str>,
) -> tracing::Span {
    let span = tracing::debug_span!(
        target: TARGET,
        "request",
        otel.name = %format_args!("{protocol} infer {model}"),
        otel.kind = "server",
        rpc.system = protocol,
        model = %model,
        version = %version,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| header(k).map(|v| (k.to_string(), v.to_string())))
        .collect();
    let cx = propagator().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    span
}

/// A stage: a DEBUG span under [`TARGET`] (disabled unless OTLP is on).
#[macro_export]
macro_rules! stage {
    ($name:literal $(, $($field:tt)*)?) => {
        tracing::debug_span!(target: "flotilla::trace", $name $(, $($field)*)?)
    };
}

/// Marks `span` (a request or an attempt) failed with `error`.
pub fn failed(span: &tracing::Span, error: &crate::Error) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "error");
    span.record("otel.status_description", format!("{}: {}", error.kind.as_str(), error.message));
}

/// The current span's context as W3C headers (`traceparent`, and `tracestate` when set), for
/// a request this process sends on; empty when there is no trace.
pub fn outgoing() -> Vec<(&'static str, String)> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return Vec::new();
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut headers = HeaderSetter(Vec::new());
    propagator().inject_context(&cx, &mut headers);
    headers.0
}

/// The current trace's id (32 hex digits), when there is a trace.
pub fn current_trace_id() -> Option<String> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Records a stage that already happened (`start`..`end`, measured elsewhere: the scheduler's
/// queue and execution) as a child of the current span, with `attributes` (built only when
/// the stage is exported, so a request without a trace allocates nothing).
pub fn past_stage(name: &'static str, start: Instant, end: Instant, attributes: impl FnOnce() -> Vec<KeyValue>) {
    let current = tracing::Span::current();
    if current.is_disabled() {
        return;
    }
    let parent = current.context();
    if !parent.span().span_context().is_valid() {
        return;
    }
    let (now, wall) = (Instant::now(), SystemTime::now());
    let at = |i: Instant| wall.checked_sub(now.saturating_duration_since(i)).unwrap_or(wall);
    let tracer = opentelemetry::global::tracer("flotilla");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(at(start))
        .with_attributes(attributes())
        .start_with_context(&tracer, &parent);
    span.end_with_timestamp(at(end.max(start)));
}

struct HeaderSetter(Vec<(&'static str, String)>);

impl Injector for HeaderSetter {
    fn set(&mut self, key: &str, value: String) {
        let key = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((key, value));
    }
}
