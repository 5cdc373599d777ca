//! `flotilla-floor`: the physical limit the serving benchmark measures Flotilla against. A minimal
//! HTTP server (axum) and a minimal gRPC server (tonic) on the runtime settings `flotilla serve`
//! uses (tokio's multi-threaded runtime, one worker per core), answering the KServe v2 infer call
//! with a fixed, valid response for the model its `config.pbtxt` describes, without decoding the
//! request. It also answers what `wrk` and `perf_analyzer` ask before they start: health,
//! readiness, model metadata, the model configuration and statistics (empty).
//!
//! `flotilla-floor --config MODEL/config.pbtxt --http-port 8000 --grpc-port 8001`

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use clap::Parser;
use flotilla_core::{config::parse_pbtxt, DataType, ModelConfig};
use flotilla_proto::inference as pb;
use flotilla_proto::inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use tonic::{Request, Response, Status};

#[derive(Parser)]
#[command(
    name = "flotilla-floor",
    about = "Fixed-answer KServe v2 HTTP and gRPC servers: the limit a server can reach"
)]
struct Cli {
    /// The model's config.pbtxt (its name, inputs and outputs shape the fixed answers).
    #[arg(long)]
    config: std::path::PathBuf,
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    #[arg(long, default_value_t = 8001)]
    grpc_port: u16,
}

/// The fixed answers, built once.
struct Answers {
    config: ModelConfig,
    metadata: pb::ModelMetadataResponse,
    metadata_json: Bytes,
    infer: pb::ModelInferResponse,
    infer_json: Bytes,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let text = std::fs::read_to_string(&cli.config).with_context(|| format!("reading {}", cli.config.display()))?;
    let config = parse_pbtxt(&text, &cli.config.display().to_string())?;
    let answers = Arc::new(answers(config)?);
    // the runtime `flotilla serve` builds (crates/server/src/main.rs)
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(answers, cli.http_port, cli.grpc_port))
}

async fn serve(answers: Arc<Answers>, http_port: u16, grpc_port: u16) -> Result<()> {
    let ok = || async { "" };
    let (a1, a2) = (answers.clone(), answers.clone());
    let router = axum::Router::new()
        .route("/v2/health/live", get(ok))
        .route("/v2/health/ready", get(ok))
        .route("/v2/models/{name}/ready", get(ok))
        .route("/v2/models/{name}", get(move || json(a1.metadata_json.clone())))
        .route(
            "/v2/models/{name}/infer",
            post(move |body: Bytes| {
                drop(body); // read whole, never decoded
                json(a2.infer_json.clone())
            }),
        );
    let http = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], http_port))).await?;
    let grpc = tonic::transport::Server::builder()
        .add_service(GrpcInferenceServiceServer::new(Floor(answers)).max_decoding_message_size(64 << 20))
        .serve(SocketAddr::from(([0, 0, 0, 0], grpc_port)));
    tokio::select! {
        r = axum::serve(http, router) => r?,
        r = grpc => r?,
    }
    Ok(())
}

async fn json(body: Bytes) -> axum::response::Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Metadata and a zero-filled batch-1 answer for `config`'s outputs.
fn answers(config: ModelConfig) -> Result<Answers> {
    let batched = config.max_batch_size > 0;
    let shape = |dims: &[i64], batch: i64| -> Vec<i64> {
        if batched {
            std::iter::once(batch).chain(dims.iter().copied()).collect()
        } else {
            dims.to_vec()
        }
    };
    let tensor = |name: &str, data_type: i32, dims: &[i64]| -> Result<pb::model_metadata_response::TensorMetadata> {
        Ok(pb::model_metadata_response::TensorMetadata {
            name: name.to_string(),
            datatype: DataType::from_config(data_type)?.as_str().to_string(),
            shape: shape(dims, -1),
        })
    };
    let metadata = pb::ModelMetadataResponse {
        name: config.name.clone(),
        versions: vec!["1".into()],
        platform: if config.platform.is_empty() { config.backend.clone() } else { config.platform.clone() },
        inputs: config.input.iter().map(|i| tensor(&i.name, i.data_type, &i.dims)).collect::<Result<_>>()?,
        outputs: config.output.iter().map(|o| tensor(&o.name, o.data_type, &o.dims)).collect::<Result<_>>()?,
    };
    let (mut outputs, mut raw, mut json_outputs) = (Vec::new(), Vec::new(), Vec::new());
    for o in &config.output {
        let datatype = DataType::from_config(o.data_type)?;
        let dims = shape(&o.dims, 1);
        let elements: i64 = dims.iter().map(|d| (*d).max(1)).product();
        let size = datatype.size().unwrap_or(4);
        raw.push(Bytes::from(vec![0u8; elements as usize * size]));
        let zero = if datatype.is_float() { serde_json::json!(0.0) } else { serde_json::json!(0) };
        json_outputs.push(serde_json::json!({
            "name": o.name, "datatype": datatype.as_str(), "shape": dims, "data": vec![zero; elements as usize],
        }));
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: o.name.clone(),
            datatype: datatype.as_str().to_string(),
            shape: dims,
            ..Default::default()
        });
    }
    let infer = pb::ModelInferResponse {
        model_name: config.name.clone(),
        model_version: "1".into(),
        outputs,
        raw_output_contents: raw,
        ..Default::default()
    };
    let infer_json = serde_json::json!({"model_name": config.name, "model_version": "1", "outputs": json_outputs});
    let tensors_json = |ts: &[pb::model_metadata_response::TensorMetadata]| -> Vec<serde_json::Value> {
        ts.iter().map(|t| serde_json::json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect()
    };
    let metadata_json = serde_json::json!({
        "name": metadata.name, "versions": metadata.versions, "platform": metadata.platform,
        "inputs": tensors_json(&metadata.inputs), "outputs": tensors_json(&metadata.outputs),
    });
    Ok(Answers {
        config,
        metadata,
        metadata_json: Bytes::from(metadata_json.to_string()),
        infer,
        infer_json: Bytes::from(infer_json.to_string()),
    })
}

struct Floor(Arc<Answers>);

type Reply<T> = Result<Response<T>, Status>;

fn not_here<T>() -> Reply<T> {
    Err(Status::unimplemented("not part of the floor server"))
}

#[tonic::async_trait]
impl GrpcInferenceService for Floor {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Reply<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }
    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Reply<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }
    async fn model_ready(&self, _: Request<pb::ModelReadyRequest>) -> Reply<pb::ModelReadyResponse> {
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Reply<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "flotilla-floor".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![],
        }))
    }
    async fn model_metadata(&self, _: Request<pb::ModelMetadataRequest>) -> Reply<pb::ModelMetadataResponse> {
        Ok(Response::new(self.0.metadata.clone()))
    }
    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Reply<pb::ModelInferResponse> {
        let id = r.into_inner().id;
        Ok(Response::new(pb::ModelInferResponse { id, ..self.0.infer.clone() }))
    }
    type ModelStreamInferStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;
    async fn model_stream_infer(
        &self,
        _: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Reply<Self::ModelStreamInferStream> {
        not_here()
    }
    async fn model_config(&self, _: Request<pb::ModelConfigRequest>) -> Reply<pb::ModelConfigResponse> {
        Ok(Response::new(pb::ModelConfigResponse { config: Some(self.0.config.clone()) }))
    }
    async fn model_statistics(&self, _: Request<pb::ModelStatisticsRequest>) -> Reply<pb::ModelStatisticsResponse> {
        let stats = pb::ModelStatistics { name: self.0.config.name.clone(), version: "1".into(), ..Default::default() };
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats: vec![stats] }))
    }
    async fn repository_index(&self, _: Request<pb::RepositoryIndexRequest>) -> Reply<pb::RepositoryIndexResponse> {
        not_here()
    }
    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Reply<pb::RepositoryModelLoadResponse> {
        not_here()
    }
    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Reply<pb::RepositoryModelUnloadResponse> {
        not_here()
    }
    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Reply<pb::SystemSharedMemoryStatusResponse> {
        not_here()
    }
    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Reply<pb::SystemSharedMemoryRegisterResponse> {
        not_here()
    }
    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Reply<pb::SystemSharedMemoryUnregisterResponse> {
        not_here()
    }
    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Reply<pb::CudaSharedMemoryStatusResponse> {
        not_here()
    }
    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Reply<pb::CudaSharedMemoryRegisterResponse> {
        not_here()
    }
    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Reply<pb::CudaSharedMemoryUnregisterResponse> {
        not_here()
    }
    async fn trace_setting(&self, _: Request<pb::TraceSettingRequest>) -> Reply<pb::TraceSettingResponse> {
        not_here()
    }
    async fn log_settings(&self, _: Request<pb::LogSettingsRequest>) -> Reply<pb::LogSettingsResponse> {
        not_here()
    }
}
