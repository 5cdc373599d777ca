//! # Flotilla service core
//!
//! Everything between the protocol adapters and the engines.
//!
//! ## Layout
//! - [`error`]: the one error type and the one table from error kind to HTTP status and gRPC code.
//! - [`datatype`], [`tensor`], [`request`]: protocol-neutral tensors, requests and responses.
//! - [`config`]: Triton's model configuration (`config.pbtxt`), parsed, validated and rendered as JSON.
//! - [`enrich`]: the hook request-time enrichment (the feature store) plugs into.
//! - [`observe`]: the hook drift monitoring plugs into (inputs and outputs of served requests).
//! - [`engine`]: the [`engine::Engine`] trait engines implement and the [`engine::Backend`] trait that loads them.
//! - [`scheduler`]: per-version queues, dynamic batching and engine threads (never on the async runtime).
//! - [`repository`]: the model repository, version policies, control modes, atomic reload.
//! - [`service`]: every protocol operation on this process's models; HTTP and gRPC call into it.
//! - [`api`]: the [`api::Api`] trait the adapters call: implemented by [`Service`] and by the fleet router.
//! - [`protocol`]: protocol rules every adapter shares (output and request parameters, load
//!   parameters, deadlines, idempotency).
//! - [`classification`]: the classification extension.
//! - [`stats`], [`metrics`]: Triton-shaped statistics and Prometheus metrics.
//! - [`secret`]: secrets that never print, and connection URLs without their password.
//! - [`tls`]: certificates, keys and CA bundles from PEM files; TLS clients with the checks asked for.
//! - [`trace`]: request spans and W3C trace context (`traceparent`) in and out, for OTLP.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod classification;
pub mod config;
pub mod datatype;
pub mod engine;
pub mod enrich;
pub mod error;
pub mod metrics;
pub mod observe;
pub mod protocol;
pub mod repository;
pub mod request;
pub mod scheduler;
pub mod secret;
pub mod service;
pub mod stats;
pub mod tensor;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod tls;
pub mod trace;

pub use api::{Api, Readiness};
pub use datatype::DataType;
pub use error::{Error, ErrorKind, Result};
pub use flotilla_proto::inference::ModelConfig;
pub use request::{InferRequest, InferResponse, ParamValue, Parameters, RequestedOutput};
pub use service::Service;
pub use tensor::Tensor;
