//! # Flotilla feature store
//!
//! Feast's model and semantics, in-process: a request names an entity, the server joins its
//! latest features before the model runs; training sets hold the value known at each moment.
//!
//! ## Layout
//! - [`definitions`]: entities, feature views and feature services from a folder of TOML files.
//! - [`value`], [`record`]: typed values, entity keys and the per-entity record (values + event time).
//! - [`store`]: online stores, embedded (redb + memory) or Redis; last write wins on event time.
//! - [`feature_store`]: [`FeatureStore`], the registry + store + metrics every entry point shares.
//! - [`serving`]: Feast's `get-online-features` and `push`, protocol-neutral.
//! - [`enrich`]: a model's `features.toml` and request-time enrichment of inference requests.
//! - [`graph`]: a graph model's `graph.toml`: k-hop neighbourhoods sampled from edge lists at
//!   request time, node features gathered into the model's input tensors.
//! - [`files`], [`ingest`]: Parquet/CSV batches into the online store.
//! - [`streams`]: Kafka, NATS JetStream, RabbitMQ and Redis Streams consumers with dead letters (JSON
//!   rows or Debezium change events), and PostgreSQL change data capture ([`streams::postgres`]).
//! - [`training`]: point-in-time correct training sets, in memory or spilled to disk under a memory limit.
#![forbid(unsafe_code)]

pub mod definitions;
pub mod duration;
pub mod enrich;
pub mod error;
pub mod feature_store;
pub mod files;
pub mod graph;
pub mod ingest;
pub mod metrics;
pub mod record;
pub mod serving;
pub mod store;
pub mod streams;
pub mod training;
pub mod value;

pub use error::{FeatureError, Result};
pub use feature_store::FeatureStore;
#[cfg(test)]
mod tests;
