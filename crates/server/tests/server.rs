//! Starts the whole server in-process on port 0 and talks to it over HTTP and gRPC.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should fail loudly

use flotilla::config::ServeConfig;
use flotilla::{run, Listeners};
use flotilla_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use flotilla_proto::inference::{model_infer_request::InferInputTensor, ModelInferRequest};
use serde_json::json;
use std::path::PathBuf;
use tokio::sync::oneshot;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/repository")
}

struct Running {
    http: String,
    grpc: String,
    metrics: String,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start() -> Running {
    let mut config = ServeConfig::with_repository(examples());
    config.listen.host = "127.0.0.1".parse().unwrap();
    config.listen.http_port = 0;
    config.listen.grpc_port = 0;
    config.listen.metrics_port = 0;
    let mut listeners = Listeners::bind(&config).await.unwrap();
    listeners.metrics = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let http = format!("http://{}", listeners.http.local_addr().unwrap());
    let grpc = format!("http://{}", listeners.grpc.local_addr().unwrap());
    let metrics = format!("http://{}/metrics", listeners.metrics.as_ref().unwrap().local_addr().unwrap());
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(run(config, listeners, async {
        let _ = rx.await;
    }));
    Running { http, grpc, metrics, stop: Some(tx), done }
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.done.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn serves_http_grpc_and_metrics_then_drains() {
    let s = start().await;
    let client = reqwest::Client::new();
    let ready = client.get(format!("{}/v2/health/ready", s.http)).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let body = json!({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": (0..16).collect::<Vec<i32>>()},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": vec![2; 16]},
    ]});
    let r: serde_json::Value = client
        .post(format!("{}/v2/models/simple/infer", s.http))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["outputs"][1]["data"], json!((0..16).map(|i| i - 2).collect::<Vec<i32>>()));

    let mut grpc = GrpcInferenceServiceClient::connect(s.grpc.clone()).await.unwrap();
    let raw: Vec<u8> = (0..16i32).flat_map(|v| v.to_le_bytes()).collect();
    let input = |name: &str| InferInputTensor {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![1, 16],
        ..Default::default()
    };
    let req = ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![input("INPUT0"), input("INPUT1")],
        raw_input_contents: vec![raw.clone().into(), raw.clone().into()],
        ..Default::default()
    };
    let resp = grpc.model_infer(req.clone()).await.unwrap().into_inner();
    let out0: Vec<i32> =
        resp.raw_output_contents[0].chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(out0, (0..16).map(|i| 2 * i).collect::<Vec<i32>>());

    let mut bad = req;
    bad.raw_input_contents.pop();
    let status = grpc.model_infer(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let text = client.get(&s.metrics).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("flotilla_inference_requests_total"), "{text}");
    assert!(text.contains(r#"protocol="grpc""#), "{text}");
    s.stop().await;
}
