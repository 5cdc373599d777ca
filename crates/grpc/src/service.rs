//! The `GRPCInferenceService` implementation.

use crate::convert::{request_from_proto, response_to_proto};
use flotilla_core::stats::CountNs;
use flotilla_core::{Error, Service};
use flotilla_proto::inference as pb;
use flotilla_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The gRPC face of the service core.
#[derive(Clone)]
pub struct InferenceService {
    service: Arc<Service>,
}

impl InferenceService {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

fn status(e: Error) -> Status {
    Status::new(e.grpc_code(), e.message)
}

type Reply<T> = Result<Response<T>, Status>;

fn duration(c: CountNs) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count: c.count, ns: c.ns })
}

fn unimplemented<T>(what: &str) -> Reply<T> {
    Err(Status::unimplemented(format!("{what} is not supported by Flotilla")))
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: self.service.live() }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Reply<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.service.ready() }))
    }

    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Reply<pb::ModelReadyResponse> {
        let r = r.into_inner();
        let ready = self.service.model_ready(&r.name, &r.version).unwrap_or(false);
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
        let m = self.service.model_metadata(&r.name, &r.version).map_err(status)?;
        let tensors = |ts: Vec<flotilla_core::service::TensorMeta>| {
            ts.into_iter()
                .map(|t| pb::model_metadata_response::TensorMetadata {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Reply<pb::ModelInferResponse> {
        let deadline = grpc_timeout_micros(r.metadata());
        let mut request = request_from_proto(r.into_inner()).map_err(status)?;
        // The gRPC deadline bounds queueing too, unless the request names its own `timeout`.
        if let Some(us) = deadline {
            request.parameters.entry("timeout".into()).or_insert(flotilla_core::ParamValue::Uint(us));
        }
        let response = self.service.infer(request).await.map_err(status)?;
        Ok(Response::new(response_to_proto(response)))
    }

    type ModelStreamInferStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        let service = self.service.clone();
        let incoming = r.into_inner();
        // Each request gets its own answer (or error message) on the stream, in order;
        // a bad request does not end the stream.
        let out = incoming
            .then(move |message| {
                let service = service.clone();
                async move {
                    let message = message?;
                    let id = message.id.clone();
                    let result = match request_from_proto(message) {
                        Ok(req) => service.infer(req).await,
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
        let config = self.service.model_config(&r.name, &r.version).map_err(status)?;
        Ok(Response::new(pb::ModelConfigResponse { config: Some((*config).clone()) }))
    }

    async fn model_statistics(&self, r: Request<pb::ModelStatisticsRequest>) -> Reply<pb::ModelStatisticsResponse> {
        let r = r.into_inner();
        let rows = self.service.statistics(&r.name, &r.version).map_err(status)?;
        let model_stats = rows
            .into_iter()
            .map(|row| {
                let s = row.stats;
                pb::ModelStatistics {
                    name: row.name,
                    version: row.version,
                    last_inference: s.last_inference_ms,
                    inference_count: s.inference_count,
                    execution_count: s.execution_count,
                    inference_stats: Some(pb::InferStatistics {
                        success: duration(s.success),
                        fail: duration(s.fail),
                        queue: duration(s.queue),
                        compute_input: duration(s.compute_input),
                        compute_infer: duration(s.compute_infer),
                        compute_output: duration(s.compute_output),
                        cache_hit: duration(CountNs::default()),
                        cache_miss: duration(CountNs::default()),
                    }),
                    batch_stats: s
                        .batches
                        .iter()
                        .map(|(size, [i, c, o])| pb::InferBatchStatistics {
                            batch_size: *size,
                            compute_input: duration(*i),
                            compute_infer: duration(*c),
                            compute_output: duration(*o),
                        })
                        .collect(),
                    memory_usage: vec![],
                    response_stats: Default::default(),
                }
            })
            .collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(&self, r: Request<pb::RepositoryIndexRequest>) -> Reply<pb::RepositoryIndexResponse> {
        let r = r.into_inner();
        let models = self
            .service
            .repository_index(r.ready)
            .map_err(status)?
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state,
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        use pb::model_repository_parameter::ParameterChoice;
        let r = r.into_inner();
        let mut config = None;
        for (k, v) in &r.parameters {
            match (k.as_str(), &v.parameter_choice) {
                ("config", Some(ParameterChoice::StringParam(s))) => config = Some(s.clone()),
                ("config", _) => {
                    return Err(Status::invalid_argument("load parameter 'config' must be a string_param"))
                }
                (k, _) if k.starts_with("file:") => {
                    return Err(Status::unimplemented(format!(
                        "load parameter '{k}': uploading model files is not supported; put them in the repository"
                    )))
                }
                _ => {}
            }
        }
        self.service.load_model(&r.model_name, config.as_deref()).await.map_err(status)?;
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

/// The client's gRPC deadline (`grpc-timeout: <digits><H|M|S|m|u|n>`) in microseconds.
fn grpc_timeout_micros(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let us = match unit {
        "H" => n.checked_mul(3_600_000_000)?,
        "M" => n.checked_mul(60_000_000)?,
        "S" => n.checked_mul(1_000_000)?,
        "m" => n.checked_mul(1_000)?,
        "u" => n,
        "n" => n / 1_000,
        _ => return None,
    };
    Some(us.max(1))
}

#[cfg(test)]
mod deadline_tests {
    use super::grpc_timeout_micros;

    #[test]
    fn grpc_timeout_header_units() {
        let mut m = tonic::metadata::MetadataMap::new();
        for (v, want) in
            [("5S", Some(5_000_000)), ("250m", Some(250_000)), ("7u", Some(7)), ("1H", Some(3_600_000_000))]
        {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout_micros(&m), want, "{v}");
        }
        for bad in ["", "S", "12x", "99999999999999999999S"] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(grpc_timeout_micros(&m), None, "{bad}");
        }
    }
}
