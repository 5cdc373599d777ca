//! The `GRPCInferenceService` implementation.

use crate::convert::{self, request_from_proto, response_to_proto};
use flotilla_core::{protocol, stage, trace};
use flotilla_core::{Api, Error};
use flotilla_proto::inference as pb;
use flotilla_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The gRPC face of the service core (a worker's, or the fleet router's).
pub struct InferenceService<A> {
    service: Arc<A>,
}

impl<A> Clone for InferenceService<A> {
    fn clone(&self) -> Self {
        Self { service: self.service.clone() }
    }
}

impl<A: Api> InferenceService<A> {
    pub fn new(service: Arc<A>) -> Self {
        Self { service }
    }

    /// One inference request, inside its trace span.
    async fn infer_traced(&self, r: Request<pb::ModelInferRequest>) -> Result<pb::ModelInferResponse, Error> {
        let deadline = grpc_timeout_micros(r.metadata());
        let headers = forwarded(&*self.service, r.metadata());
        let mut request = stage!("decode").in_scope(|| request_from_proto(r.into_inner()))?;
        if let Some(us) = deadline {
            protocol::apply_deadline(&mut request.parameters, us);
        }
        protocol::forward_headers(
            &mut request.parameters,
            headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_str()))),
            |_| true,
        );
        let response = self.service.infer(request).await?;
        Ok(stage!("encode").in_scope(|| response_to_proto(response)))
    }
}

/// The table's gRPC code and the message, with the exact kind in `flotilla-error-kind`
/// metadata (a router passes it on; a draining worker's UNAVAILABLE means "never ran").
pub fn status(e: Error) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(flotilla_core::error::KIND_HEADER, tonic::metadata::MetadataValue::from_static(e.kind.as_str()));
    Status::with_metadata(e.grpc_code(), e.message, metadata)
}

type Reply<T> = Result<Response<T>, Status>;

fn unimplemented<T>(what: &str) -> Reply<T> {
    Err(Status::unimplemented(format!("{what} is not supported by Flotilla")))
}

#[tonic::async_trait]
impl<A: Api> GrpcInferenceService for InferenceService<A> {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: self.service.live() }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Reply<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.service.ready() }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Reply<pb::ModelReadyResponse> {
        let r = r.into_inner();
        let ready = self.service.model_ready(&r.name, &r.version).await.ready;
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Reply<pb::ServerMetadataResponse> {
        let o = self.service.options();
        Ok(Response::new(pb::ServerMetadataResponse {
            name: o.server_name.clone(),
            version: o.server_version.clone(),
            extensions: flotilla_core::service::EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(&self, r: Request<pb::ModelMetadataRequest>) -> Reply<pb::ModelMetadataResponse> {
        let r = r.into_inner();
        let m = self.service.model_metadata(&r.name, &r.version).await.map_err(status)?;
        Ok(Response::new(convert::metadata_to_proto(m)))
    }

    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Reply<pb::ModelInferResponse> {
        let m = r.metadata();
        let span = trace::request_span("grpc", &r.get_ref().model_name, &r.get_ref().model_version, |k| {
            m.get(k).and_then(|v| v.to_str().ok())
        });
        let result = self.infer_traced(r).instrument(span.clone()).await;
        if let Err(e) = &result {
            trace::failed(&span, e);
        }
        result.map(Response::new).map_err(status)
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        let service = self.service.clone();
        let headers = Arc::new(forwarded(&*self.service, r.metadata()));
        let incoming = r.into_inner();
        // Each request gets its own answer (or error message) on the stream, in order;
        // a bad request does not end the stream.
        let out = incoming
            .then(move |message| {
                let service = service.clone();
                let headers = headers.clone();
                async move {
                    let message = message?;
                    let id = message.id.clone();
                    let result = match request_from_proto(message) {
                        Ok(mut req) => {
                            let pairs = headers.iter().map(|(k, v)| (k.as_str(), Some(v.as_str())));
                            protocol::forward_headers(&mut req.parameters, pairs, |_| true);
                            service.infer(req).await
                        }
                        Err(e) => Err(e),
                    };
                    Ok(match result {
                        Ok(resp) => pb::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(response_to_proto(resp)),
                        },
                        Err(e) => pb::ModelStreamInferResponse {
                            error_message: e.message,
                            infer_response: Some(pb::ModelInferResponse { id, ..Default::default() }),
                        },
                    })
                }
            })
            .take_while(|r: &Result<pb::ModelStreamInferResponse, Status>| futures::future::ready(r.is_ok()));
        Ok(Response::new(Box::pin(out)))
    }

    async fn model_config(&self, r: Request<pb::ModelConfigRequest>) -> Reply<pb::ModelConfigResponse> {
        let r = r.into_inner();
        let config = self.service.model_config(&r.name, &r.version).await.map_err(status)?;
        Ok(Response::new(pb::ModelConfigResponse { config: Some((*config).clone()) }))
    }

    async fn model_statistics(&self, r: Request<pb::ModelStatisticsRequest>) -> Reply<pb::ModelStatisticsResponse> {
        let r = r.into_inner();
        let rows = self.service.statistics(&r.name, &r.version).await.map_err(status)?;
        let model_stats = rows.into_iter().map(convert::stats_to_proto).collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(&self, r: Request<pb::RepositoryIndexRequest>) -> Reply<pb::RepositoryIndexResponse> {
        let r = r.into_inner();
        let models = self
            .service
            .repository_index(r.ready)
            .await
            .map_err(status)?
            .into_iter()
            .map(convert::index_to_proto)
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        use pb::model_repository_parameter::ParameterChoice;
        let r = r.into_inner();
        let params = r.parameters.iter().map(|(k, v)| {
            let text = match &v.parameter_choice {
                Some(ParameterChoice::StringParam(s)) => Some(s.as_str()),
                _ => None,
            };
            (k.as_str(), text)
        });
        let options = protocol::load_options(params).map_err(status)?;
        self.service.load_model(&r.model_name, options).await.map_err(status)?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Reply<pb::RepositoryModelUnloadResponse> {
        let r = r.into_inner();
        self.service.unload_model(&r.model_name).await.map_err(status)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Reply<pb::SystemSharedMemoryStatusResponse> {
        unimplemented("system shared memory")
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Reply<pb::SystemSharedMemoryRegisterResponse> {
        unimplemented("system shared memory")
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Reply<pb::SystemSharedMemoryUnregisterResponse> {
        unimplemented("system shared memory")
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Reply<pb::CudaSharedMemoryStatusResponse> {
        unimplemented("CUDA shared memory")
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Reply<pb::CudaSharedMemoryRegisterResponse> {
        unimplemented("CUDA shared memory")
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Reply<pb::CudaSharedMemoryUnregisterResponse> {
        unimplemented("CUDA shared memory")
    }

    async fn trace_setting(&self, _: Request<pb::TraceSettingRequest>) -> Reply<pb::TraceSettingResponse> {
        unimplemented("trace settings")
    }

    async fn log_settings(&self, _: Request<pb::LogSettingsRequest>) -> Reply<pb::LogSettingsResponse> {
        unimplemented("run-time log settings (use --log-level)")
    }
}

/// The client's gRPC deadline (`grpc-timeout`) in microseconds.
fn grpc_timeout_micros(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    protocol::grpc_timeout_micros(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// The metadata entries the service copies into request parameters (name, text value).
fn forwarded<A: Api>(service: &A, metadata: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    metadata
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) if service.forwards_header(k.as_str()) => {
                v.to_str().ok().map(|v| (k.as_str().to_string(), v.to_string()))
            }
            _ => None,
        })
        .collect()
}
