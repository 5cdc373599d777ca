//! A deliberately failing test-only engine behind the real HTTP adapter: an
//! engine panic fails that batch with a 500 naming the model, the instance is
//! replaced, the server stays up; and dynamic batching joins a concurrent
//! burst into fewer executions while every client gets its own rows back.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup should fail loudly

use flotilla_core::engine::{AutocompleteOptions, Backend, Engine, Phases};
use flotilla_core::metrics::Metrics;
use flotilla_core::repository::{ControlMode, LoadSettings, Repository};
use flotilla_core::service::{Service, ServiceOptions};
use flotilla_core::{ModelConfig, Result, Tensor};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// `model.fault`: FP32 [2] in, the same out; a row starting with 13 panics the engine.
struct FaultBackend;
struct FaultEngine;

impl Engine for FaultEngine {
    fn infer(&self, inputs: &[Tensor], phases: &mut Phases) -> Result<Vec<Tensor>> {
        phases.input_done();
        let x = &inputs[0];
        let first = f32::from_le_bytes(x.data[..4].try_into().unwrap());
        if x.data.chunks(8).any(|row| f32::from_le_bytes(row[..4].try_into().unwrap()) == 13.0) {
            panic!("deliberate fault (row starting {first})");
        }
        // Slow enough that a concurrent burst queues up behind the running batch.
        std::thread::sleep(std::time::Duration::from_millis(5));
        phases.infer_done();
        let mut out = x.clone();
        out.name = "OUT".into();
        Ok(vec![out])
    }
}

impl Backend for FaultBackend {
    fn name(&self) -> &'static str {
        "fault"
    }
    fn platform(&self) -> &'static str {
        "fault"
    }
    fn serves(&self, c: &ModelConfig) -> bool {
        c.backend == "fault"
    }
    fn default_filenames(&self) -> &'static [&'static str] {
        &["model.fault"]
    }
    fn autocomplete(&self, _: &mut ModelConfig, _: &Path, _: &AutocompleteOptions) -> Result<()> {
        Ok(())
    }
    fn load(&self, _: &ModelConfig, _: &Path) -> Result<Arc<dyn Engine>> {
        Ok(Arc::new(FaultEngine))
    }
}

const CONFIG: &str = r#"
backend: "fault"
max_batch_size: 64
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"#;

async fn start() -> (tempfile::TempDir, Arc<Service>, String) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("faulty");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::write(model.join("1/model.fault"), "").unwrap();
    std::fs::write(model.join("config.pbtxt"), CONFIG).unwrap();
    let settings = LoadSettings {
        backends: vec![Arc::new(FaultBackend)],
        autocomplete: AutocompleteOptions::default(),
        default_instances: 1,
    };
    let repository = Repository::new(dir.path().to_path_buf(), ControlMode::None, settings);
    repository.load_initial(&[]).await.unwrap();
    let service = Arc::new(Service::new(Arc::new(repository), Metrics::new(), ServiceOptions::default()));
    let options = flotilla_http::HttpOptions { max_request_bytes: 1 << 20, features: None, drift: None, auth: None };
    let app = flotilla_http::router(service.clone(), options, axum::Router::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (dir, service, url)
}

async fn infer(client: &reqwest::Client, url: &str, rows: &[[f32; 2]]) -> (u16, Value) {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let body = json!({"inputs": [{"name": "IN", "shape": [rows.len(), 2], "datatype": "FP32", "data": data}]});
    let r = client.post(format!("{url}/v2/models/faulty/infer")).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_is_a_500_naming_the_model_and_the_server_stays_up() {
    let (_dir, service, url) = start().await;
    let client = reqwest::Client::new();
    let (status, ok) = infer(&client, &url, &[[1.0, 2.0]]).await;
    assert_eq!(status, 200, "{ok}");
    for _ in 0..3 {
        let (status, body) = infer(&client, &url, &[[13.0, 0.0]]).await;
        assert_eq!(status, 500, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("faulty/1") && message.contains("deliberate fault"), "{message}");
    }
    let (status, body) = infer(&client, &url, &[[3.0, 4.0]]).await;
    assert_eq!((status, &body["outputs"][0]["data"]), (200, &json!([3.0, 4.0])), "{body}");
    let metrics = service.metrics.render();
    assert!(
        metrics.lines().any(|l| l.starts_with("flotilla_instance_restarts_total{") && l.ends_with(" 3")),
        "three replacements counted:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_is_batched_and_every_client_gets_its_own_rows() {
    let (_dir, service, url) = start().await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let rows: Vec<[f32; 2]> = (0..1 + i % 3).map(|r| [100.0 + i as f32, r as f32]).collect();
            let (status, body) = infer(&client, &url, &rows).await;
            (rows, status, body)
        }));
    }
    for t in tasks {
        let (rows, status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let want: Vec<f32> = rows.iter().flatten().copied().collect();
        assert_eq!(body["outputs"][0]["data"], json!(want));
        assert_eq!(body["outputs"][0]["shape"], json!([rows.len(), 2]));
    }
    let stats = service.statistics("faulty", "").unwrap();
    let s = &stats[0].stats;
    assert_eq!(s.inference_count, (0..48).map(|i| 1 + i % 3).sum::<u64>());
    assert!(s.execution_count < 48, "48 concurrent requests ran in {} executions", s.execution_count);
    assert!(s.batches.keys().any(|rows| *rows > 3), "some batch joined several requests: {:?}", s.batches.keys());
}
