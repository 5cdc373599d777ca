//! # Flotilla
//!
//! A real-time ML inference server in one binary, speaking the KServe v2 /
//! Triton protocols so existing clients work unchanged.
//!
//! ## Layout (along the request path)
//! - `flotilla-http` (axum) and `flotilla-grpc` (tonic): thin protocol adapters.
//! - `flotilla-core`: the service layer, model repository, engine pools, errors, stats, metrics.
//! - `flotilla-ort`: the ONNX engine through ONNX Runtime (library loaded at run time).
//! - `flotilla-tract`: the ONNX engine in pure Rust (when ONNX Runtime is absent, or `backend: "tract"`).
//! - `flotilla-text`: text models (tokenizer.json + ONNX encoder): strings in, embeddings or logits out.
//! - `flotilla-features`: the feature store (online store, ingestion, enrichment, training sets).
//! - `flotilla-drift`: drift monitoring (reference profiles, windows, drift scores, alerts).
//! - `flotilla-proto`: protocol and model-config messages (built with protox).
//! - this crate: the CLI ([`config`]) and [`run`], which wires everything and drains on shutdown.
#![forbid(unsafe_code)]

pub mod config;
pub mod features_cli;
pub mod profile_cli;

use anyhow::Context;
use axum::serve::ListenerExt;
use config::{ControlModeArg, ServeConfig};
use flotilla_core::engine::{AutocompleteOptions, Backend};
use flotilla_core::enrich::Enricher;
use flotilla_core::metrics::Metrics;
use flotilla_core::observe::Observer;
use flotilla_core::repository::{ControlMode, LoadSettings, Repository};
use flotilla_core::service::{Service, ServiceOptions};
use flotilla_drift::monitor::{Folding, Monitor};
use flotilla_features::enrich::Enrichment;
use flotilla_features::FeatureStore;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Bound sockets for the server (tests bind port 0).
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the ports `config` names; metrics port 0 disables metrics.
    pub async fn bind(config: &ServeConfig) -> anyhow::Result<Self> {
        let bind = |port: u16| async move {
            let addr = SocketAddr::new(config.host, port);
            TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
        };
        Ok(Self {
            http: bind(config.http_port).await?,
            grpc: bind(config.grpc_port).await?,
            metrics: match config.metrics_port {
                0 => None,
                p => Some(bind(p).await?),
            },
        })
    }
}

/// The backends of this server, in the order the repository tries them: trees (XGBoost,
/// LightGBM), text (tokenizer + encoder), ONNX Runtime when its library is found (a
/// `--onnxruntime-lib` that does not load is an error), then tract.
/// `instances` is the engine instance count of models without instance_group.
pub fn backends(config: &ServeConfig, instances: usize) -> anyhow::Result<Vec<Arc<dyn Backend>>> {
    let mut backends: Vec<Arc<dyn Backend>> = vec![Arc::new(flotilla_trees::TreeBackend)];
    if let Some(runtime) = flotilla_ort::library::init(config.onnxruntime_lib.as_deref())? {
        tracing::info!(
            library = %runtime.path().display(),
            from = %runtime.origin(),
            "ONNX Runtime loaded; ONNX models run on it (backend: \"tract\" picks tract)"
        );
        backends.push(Arc::new(flotilla_ort::OrtBackend::new(runtime, instances)));
    }
    backends.push(Arc::new(flotilla_tract::TractBackend));
    // Text models (model.onnx with a tokenizer.json) are tried before the ONNX backends and
    // run their encoder on the preferred one: ONNX Runtime when loaded, else tract.
    if let Some(at) = backends.iter().position(|b| b.platform() == "onnxruntime_onnx") {
        let text = flotilla_text::TextBackend::new(backends[at].clone());
        backends.insert(at, Arc::new(text));
    }
    Ok(backends)
}

/// The feature repository `serve` uses: the one given (`none` = no feature store), else
/// examples/features when it exists.
fn feature_repo(config: &ServeConfig) -> Option<std::path::PathBuf> {
    match &config.feature_repo {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.clone()),
        None => Some(std::path::PathBuf::from("examples/features")).filter(|p| p.is_dir()),
    }
}

/// Opens the feature store when there is a feature repository.
pub async fn open_features(config: &ServeConfig, metrics: &Metrics) -> anyhow::Result<Option<Arc<FeatureStore>>> {
    let Some(repo) = feature_repo(config) else {
        return Ok(None);
    };
    let store = FeatureStore::open(&repo, &config.online_store, &metrics.registry)
        .await
        .with_context(|| format!("feature store ({}, {})", repo.display(), config.online_store))?;
    tracing::info!(
        repository = %repo.display(),
        online_store = %config.online_store,
        views = store.registry.views.len(),
        "feature store open"
    );
    Ok(Some(Arc::new(store)))
}

/// Builds the service: repository (with its initial loads), metrics and, when there is a
/// feature repository, the feature store that enriches requests.
pub async fn build_service(config: &ServeConfig) -> anyhow::Result<Built> {
    let metrics = Metrics::new();
    let features = open_features(config, &metrics).await?;
    let drift_state = Some(config.drift_state_dir.clone()).filter(|d| d.as_os_str() != "none");
    let drift = config
        .drift_monitoring
        .then(|| Monitor::new(config.model_repository.clone(), drift_state, &metrics.registry, Folding::IdleThread));
    let enrichment = features.as_ref().map(|f| Arc::new(Enrichment::new(f.clone(), config.model_repository.clone())));
    let mode = match config.model_control_mode {
        ControlModeArg::None => ControlMode::None,
        ControlModeArg::Poll => ControlMode::Poll,
        ControlModeArg::Explicit => ControlMode::Explicit,
    };
    let instances = match config.instances {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4),
        n => n,
    };
    let settings = LoadSettings {
        backends: backends(config, instances)?,
        autocomplete: AutocompleteOptions { default_max_batch_size: config.default_max_batch_size },
        default_instances: instances,
    };
    let ready = metrics.model_ready.clone();
    let hook_enrichment = enrichment.clone();
    let hook_drift = drift.clone();
    let repository = Repository::new(config.model_repository.clone(), mode, settings).with_change_hook(
        move |model, versions, up| {
            for v in versions {
                ready.with_label_values(&[model, v]).set(i64::from(up));
            }
            if let Some(e) = &hook_enrichment {
                e.model_changed(model);
            }
            if let Some(d) = &hook_drift {
                d.model_changed(model);
            }
        },
    );
    repository
        .load_initial(&config.load_model)
        .await
        .with_context(|| format!("model repository {}", config.model_repository.display()))?;
    let options = ServiceOptions {
        strict_readiness: config.strict_readiness,
        server_name: config.server_name.clone(),
        ..ServiceOptions::default()
    };
    let mut service = Service::new(Arc::new(repository), metrics, options);
    if let Some(e) = enrichment {
        service = service.with_enricher(e);
    }
    if let Some(d) = &drift {
        service = service.with_observer(d.clone());
    }
    Ok(Built { service: Arc::new(service), features, drift })
}

/// What [`build_service`] makes: the service and the optional parts beside it.
pub struct Built {
    pub service: Arc<Service>,
    pub features: Option<Arc<FeatureStore>>,
    pub drift: Option<Arc<Monitor>>,
}

/// Runs the server until `shutdown` completes, then drains: readiness turns
/// false, listeners stop accepting, in-flight requests finish (up to
/// `--exit-timeout-secs`).
pub async fn run(config: ServeConfig, listeners: Listeners, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let Built { service, features, drift } = build_service(&config).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    tracing::info!(
        http = %listeners.http.local_addr()?,
        grpc = %listeners.grpc.local_addr()?,
        metrics = %listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_else(|| "disabled".into()),
        repository = %config.model_repository.display(),
        "listening"
    );

    let mut tasks = tokio::task::JoinSet::new();
    let http_router = flotilla_http::router(
        service.clone(),
        flotilla_http::HttpOptions {
            max_request_bytes: config.max_request_bytes,
            features: features.clone(),
            drift: drift.clone(),
        },
        axum::Router::new(),
    );
    // No Nagle delay on small responses (headers and body may leave in separate writes).
    let http_listener = listeners.http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http = axum::serve(http_listener, http_router).with_graceful_shutdown(stopped());
    tasks.spawn(async move { http.await.context("HTTP server") });

    let grpc_parts = flotilla_grpc::build(service.clone(), config.max_request_bytes, features.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let health = grpc_parts.health.clone();
    // Server::tcp_nodelay only applies to sockets tonic binds itself; set it on ours.
    let incoming = tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    let grpc = tonic::transport::Server::builder()
        .layer(flotilla_grpc::MetricsLayer::new(service.metrics.clone()))
        .add_routes(grpc_parts.routes)
        .serve_with_incoming_shutdown(incoming, stopped());
    tasks.spawn(async move { grpc.await.context("gRPC server") });

    if let Some(listener) = listeners.metrics {
        let m = service.metrics.clone();
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let m = m.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        );
        let server = axum::serve(listener, router).with_graceful_shutdown(stopped());
        tasks.spawn(async move { server.await.context("metrics server") });
    }

    if let Some(monitor) = drift.clone() {
        let (stop, budget) = (stop_tx.subscribe(), config.drift_cpu_budget);
        tasks.spawn(async move {
            monitor.run(stop, Some(budget)).await;
            Ok(())
        });
    }

    if let Some(store) = features.clone().filter(|_| config.consume_streams) {
        let consumers = flotilla_features::streams::spawn_all(store, stop_tx.subscribe());
        let mut stop = stop_tx.subscribe();
        tasks.spawn(async move {
            // Consumers end on shutdown (or give up on a source they cannot read): wait for shutdown.
            consumers.join_all().await;
            let _ = stop.wait_for(|s| *s).await;
            Ok(())
        });
    }

    if config.model_control_mode == ControlModeArg::Poll {
        let repository = service.repository.clone();
        let every = Duration::from_secs(config.repository_poll_secs.max(1));
        let mut stop = stop_tx.subscribe();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                repository.poll().await;
            }
        });
    }

    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested; draining"),
        Some(result) = tasks.join_next() => {
            result.context("server task panicked")??;
            anyhow::bail!("a listener stopped unexpectedly");
        }
    }
    service.start_draining();
    flotilla_grpc::set_not_serving(&health).await;
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result.context("server task panicked").and_then(|r| r) {
                tracing::warn!(error = %e, "error while draining");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(config.exit_timeout_secs), drain).await.is_err() {
        tracing::warn!(timeout_secs = config.exit_timeout_secs, "exit timeout reached with requests still in flight");
    }
    tracing::info!("stopped");
    Ok(())
}
