//! KServe v2 / Triton gRPC adapter: `inference.GRPCInferenceService` over
//! [`flotilla_core::Api`] (a worker's service or the fleet router), plus `grpc.health.v1.Health`, server reflection and Feast's
//! `feast.serving.ServingService` over the feature store. Decode, call the service, encode; no business logic here.
//! [`AuthLayer`] checks bearer tokens and [`MetricsLayer`] counts every call.
#![forbid(unsafe_code)]

mod auth;
pub mod convert;
pub mod features;
mod layer;
mod service;

pub use auth::AuthLayer;
pub use layer::MetricsLayer;
pub use service::{status, InferenceService};

use flotilla_core::Api;
use flotilla_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use std::sync::Arc;
use tonic_health::server::HealthReporter;

/// Fully-qualified name of the inference service (for health checks).
pub const SERVICE_NAME: &str = "inference.GRPCInferenceService";

/// Everything the gRPC listener serves, and the health reporter to flip on drain.
pub struct GrpcParts {
    pub routes: tonic::service::Routes,
    pub health: HealthReporter,
}

/// Builds the inference, health and reflection services (and Feast's `feast.serving.ServingService`
/// when a feature store is open); messages up to `max_message_bytes`.
pub async fn build<A: Api>(
    service: Arc<A>,
    max_message_bytes: usize,
    features: Option<Arc<flotilla_features::FeatureStore>>,
) -> Result<GrpcParts, String> {
    use tonic::codec::CompressionEncoding::{Deflate, Gzip};
    // Accept requests compressed as tritonclient's `compression_algorithm` sends them. Responses
    // go uncompressed, as Triton sends them: gRPC C++ clients advertise gzip/deflate by default,
    // and compressing small tensors costs more than it saves.
    let inference = GrpcInferenceServiceServer::new(InferenceService::new(service))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(Gzip)
        .accept_compressed(Deflate);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    health.set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving).await;
    // Reflection in both versions: grpcurl speaks v1, older clients (grpcio-reflection) v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(flotilla_proto::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection().build_v1().map_err(|e| format!("cannot build gRPC reflection: {e}"))?;
    let v1alpha = reflection().build_v1alpha().map_err(|e| format!("cannot build gRPC reflection: {e}"))?;
    let mut routes =
        tonic::service::Routes::new(inference).add_service(health_service).add_service(v1).add_service(v1alpha);
    if let Some(store) = features {
        use flotilla_proto::feast::serving::serving_service_server::ServingServiceServer;
        routes = routes.add_service(
            ServingServiceServer::new(features::FeatureServing::new(store))
                .max_decoding_message_size(max_message_bytes)
                .accept_compressed(Gzip)
                .accept_compressed(Deflate),
        );
    }
    Ok(GrpcParts { routes, health })
}

/// Marks every service NOT_SERVING (on drain).
pub async fn set_not_serving(health: &HealthReporter) {
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    health.set_service_status(SERVICE_NAME, tonic_health::ServingStatus::NotServing).await;
}
