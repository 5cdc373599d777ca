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
//! - `flotilla-payload`: the payload log (sampled requests to Parquet) and offline replay.
//! - `flotilla-proto`: protocol and model-config messages (built with protox).
//! - this crate: the CLI ([`config`]) and [`run`], which wires everything and drains on shutdown;
//!   [`telemetry`]: logs, and request traces over OTLP; [`dashboard`]: the live web pages at
//!   `/dashboard` on the metrics port; [`security`]: tokens, the fleet token and TLS ([`tls`])
//!   from the flags.
#![forbid(unsafe_code)]

pub mod config;
pub mod dashboard;
pub mod features_cli;
pub mod profile_cli;
pub mod replay_cli;
pub mod route;
pub mod security;
pub mod telemetry;
pub mod test_backend;
pub mod tls;
pub mod worker;

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
        Self::bind_on(&config.listen).await
    }

    /// Binds the HTTP, gRPC and (unless 0) metrics ports of `listen`.
    pub async fn bind_on(listen: &config::ListenArgs) -> anyhow::Result<Self> {
        let (host, http, grpc, metrics) = (listen.host, listen.http_port, listen.grpc_port, listen.metrics_port);
        let bind = |port: u16| async move {
            let addr = SocketAddr::new(host, port);
            TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
        };
        Ok(Self {
            http: bind(http).await?,
            grpc: bind(grpc).await?,
            metrics: match metrics {
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
    if test_backend::enabled() {
        backends.push(Arc::new(test_backend::DelayBackend));
    }
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
    let location = config.online_store();
    let store = FeatureStore::open(&repo, &location, &metrics.registry)
        .await
        .with_context(|| format!("feature store ({}, {location})", repo.display()))?;
    tracing::info!(
        repository = %repo.display(),
        online_store = %location,
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
    let drift_state = Some(config.drift_state_dir()).filter(|d| d.as_os_str() != "none");
    let drift = config
        .drift_monitoring
        .then(|| Monitor::new(config.model_repository.clone(), drift_state, &metrics.registry, Folding::IdleThread));
    if let Some(m) = drift.as_ref().filter(|_| config.joins()) {
        m.leave_webhooks_to_fleet();
    }
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
    let payload = match &config.payload_log {
        Some(dir) if dir.as_os_str() != "none" => {
            let target = dir.to_string_lossy().to_string();
            let sink = match kafka_target(&target, "--payload-log") {
                Some(parsed) => {
                    let (brokers, topic) = parsed?;
                    let producer = flotilla_features::streams::TopicProducer::connect(brokers, topic)
                        .await
                        .map_err(anyhow::Error::msg)
                        .with_context(|| format!("--payload-log {target}"))?;
                    flotilla_payload::log::Sink::Messages(Box::new(KafkaSink(producer)))
                }
                None => flotilla_payload::log::Sink::Files(dir.clone()),
            };
            let options = flotilla_payload::log::Options {
                sink,
                max_bytes: config.payload_log_max_mb.max(1) * 1024 * 1024,
                max_age: Duration::from_secs_f64(config.payload_log_max_age_secs.max(1.0)),
                queue: config.payload_log_queue,
                salt: std::env::var("FLOTILLA_PAYLOAD_SALT").unwrap_or_default().into_bytes(),
                cpu_budget: config.payload_log_cpu_budget,
            };
            let log = flotilla_payload::log::PayloadLog::start(&config.model_repository, options, &metrics.registry)
                .context("payload log")?;
            Some(Arc::new(log))
        }
        _ => None,
    };
    let ready = metrics.model_ready.clone();
    let hook_enrichment = enrichment.clone();
    let hook_drift = drift.clone();
    let hook_payload = payload.clone();
    let check_drift = drift.clone();
    let repository = Repository::new(config.model_repository.clone(), mode, settings)
        .with_load_check(move |model, config| {
            let refused = check_drift.as_ref()?.check_fit(model, config).err()?;
            Some(format!("drift monitoring off: {refused}"))
        })
        .with_change_hook(move |model, versions, up| {
            for v in versions {
                ready.with_label_values(&[model, v]).set(i64::from(up));
            }
            if let Some(e) = &hook_enrichment {
                e.model_changed(model);
            }
            if let Some(d) = &hook_drift {
                d.model_changed(model);
            }
            if let Some(p) = &hook_payload {
                flotilla_core::observe::Recorder::model_changed(p.as_ref(), model);
            }
        });
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
    if let Some(p) = &payload {
        service = service.with_recorder(p.clone());
    }
    Ok(Built { service: Arc::new(service), features, drift, payload })
}

/// What [`build_service`] makes: the service and the optional parts beside it.
pub struct Built {
    pub service: Arc<Service>,
    pub features: Option<Arc<FeatureStore>>,
    pub drift: Option<Arc<Monitor>>,
    pub payload: Option<Arc<flotilla_payload::log::PayloadLog>>,
}

/// The brokers and topic of a `kafka://BROKER:PORT[,BROKER:PORT...]/TOPIC` target (`--payload-log`,
/// `replay --log`); `None` when `target` is not a Kafka URL, an error naming `flag` when it is a
/// malformed one.
pub(crate) fn kafka_target<'a>(target: &'a str, flag: &str) -> Option<anyhow::Result<(&'a str, &'a str)>> {
    let rest = target.strip_prefix("kafka://")?;
    Some(
        rest.split_once('/')
            .filter(|(b, t)| !b.is_empty() && !t.is_empty())
            .with_context(|| format!("{flag} kafka://BROKER:PORT[,BROKER:PORT...]/TOPIC")),
    )
}

/// The payload log's Kafka topic.
struct KafkaSink(flotilla_features::streams::TopicProducer);

impl flotilla_payload::log::MessageSink for KafkaSink {
    fn send(&mut self, key: &str, payload: &[u8]) -> Result<(), String> {
        self.0.send(key, payload)
    }

    fn flush(&mut self) {
        if let Err(e) = self.0.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "payload log messages not all delivered");
        }
    }
}

/// A worker's source leases, as the stream consumers ask for them.
struct FleetLeases(Arc<flotilla_fleet::leases::SourceLeases>);

impl flotilla_features::streams::Exclusive for FleetLeases {
    fn hold(&self, source: &str) -> watch::Receiver<bool> {
        self.0.hold(source)
    }
}

/// Runs the server until `shutdown` completes, then drains: readiness turns
/// false, listeners stop accepting, in-flight requests finish (up to
/// `--exit-timeout-secs`). A fleet worker (`--join`) first drains as on a preemption notice:
/// its routers stop sending at once, and it leaves the fleet when nothing is left.
pub async fn run(
    mut config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let security = security::Security::from_args(&config.security)?;
    let worker::Prepared { agent: mut agent_settings, consumer } = worker::prepare(&mut config, &listeners)?;
    agent_settings.link = security.link.clone();
    let Built { service, features, drift, payload } = build_service(&config).await?;
    agent_settings.features = features.is_some();
    agent_settings.drift = drift.is_some();
    let agent = flotilla_fleet::agent::Agent::new(agent_settings, service.clone());
    let hook_agent = agent.clone();
    service.repository.add_change_hook(move |_, _, _| hook_agent.changed());
    let (stop_tx, _) = watch::channel(false);

    tracing::info!(
        http = %listeners.http.local_addr()?,
        grpc = %listeners.grpc.local_addr()?,
        metrics = %listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_else(|| "disabled".into()),
        repository = %config.model_repository.display(),
        worker = agent.id(),
        "listening"
    );

    let graphql = flotilla_graphql::Sources::worker(service.clone(), features.clone(), drift.clone());
    let extra =
        flotilla_fleet::http::worker_routes(agent.clone(), Duration::from_millis(config.fleet.preempt_deadline_ms))
            .merge(flotilla_graphql::routes(graphql, config.max_request_bytes));
    let http_router = flotilla_http::router(
        service.clone(),
        flotilla_http::HttpOptions {
            max_request_bytes: config.max_request_bytes,
            features: features.clone(),
            drift: drift.clone(),
            auth: security.auth.clone(),
        },
        extra,
    );
    let grpc_parts = flotilla_grpc::build(service.clone(), config.max_request_bytes, features.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    let health = grpc_parts.health.clone();
    let mut board = dashboard::Dashboard::new(service.metrics.registry.clone());
    board.drift = drift.clone();
    board.features = features.is_some();
    let mut tasks = spawn_listeners(
        listeners,
        http_router,
        grpc_parts.routes,
        service.metrics.clone(),
        board,
        &security,
        &stop_tx,
    )?;

    if let Some(monitor) = drift.clone() {
        let (stop, budget) = (stop_tx.subscribe(), config.drift_cpu_budget);
        tasks.spawn(async move {
            monitor.run(stop, Some(budget)).await;
            Ok(())
        });
    }

    if let Some(store) = features.clone().filter(|_| config.consume_streams) {
        // Workers sharing one online store take turns on a single-consumer source (a
        // replication slot) by a lease in the fleet's registry.
        let exclusive = (config.joins() && consumer.is_none())
            .then(|| Arc::new(FleetLeases(agent.leases.clone())) as Arc<dyn flotilla_features::streams::Exclusive>);
        let consumers =
            flotilla_features::streams::spawn_all(store, stop_tx.subscribe(), consumer.as_deref(), exclusive);
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

    // Heartbeats stop only after the fleet drain below, so the routers hear "drained".
    let (agent_stop, agent_stop_rx) = watch::channel(false);
    let heartbeats = agent.spawn(agent_stop_rx);

    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested; draining"),
        Some(result) = tasks.join_next() => {
            result.context("server task panicked")??;
            anyhow::bail!("a listener stopped unexpectedly");
        }
    }
    let exit_timeout = Duration::from_secs(config.exit_timeout_secs);
    if config.joins() {
        agent.preempt(exit_timeout).await;
        if !agent.wait_drained(exit_timeout).await {
            tracing::warn!(timeout_secs = config.exit_timeout_secs, "exit timeout reached before the worker drained");
        }
        agent.leave().await;
    }
    agent_stop.send_replace(true);
    let _ = heartbeats.await;
    service.start_draining();
    flotilla_grpc::set_not_serving(&health).await;
    stop_tx.send_replace(true);
    drain_tasks(tasks, exit_timeout).await;
    if let Some(p) = payload {
        // What the payload log buffered is written and its files completed.
        tokio::task::spawn_blocking(move || p.close()).await.ok();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves HTTP, gRPC and (when bound) metrics with the dashboard until `stop` turns true; one
/// task each, and the dashboard's sampler.
pub fn spawn_listeners(
    listeners: Listeners,
    http_router: axum::Router,
    grpc_routes: tonic::service::Routes,
    metrics: Metrics,
    dashboard: dashboard::Dashboard,
    security: &security::Security,
    stop: &watch::Sender<bool>,
) -> anyhow::Result<tokio::task::JoinSet<anyhow::Result<()>>> {
    let stopped = || {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    security.spawn_reload(&mut tasks, stop);
    serve_http(&mut tasks, listeners.http, http_router, security, stopped(), "HTTP server")?;

    // The token check sits inside the metrics layer, so refusals are counted.
    let grpc_server = tonic::transport::Server::builder()
        .layer(flotilla_grpc::MetricsLayer::new(metrics.clone()))
        .layer(flotilla_grpc::AuthLayer::new(security.auth.clone()))
        .add_routes(grpc_routes);
    match &security.tls {
        Some(tls) => {
            let incoming = tls::TlsListener::new(listeners.grpc, tls.clone(), "grpc")?.into_stream();
            let grpc = grpc_server.serve_with_incoming_shutdown(incoming, stopped());
            tasks.spawn(async move { grpc.await.context("gRPC server") });
        }
        None => {
            // Server::tcp_nodelay only applies to sockets tonic binds itself; set it on ours.
            let incoming = tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
            let grpc = grpc_server.serve_with_incoming_shutdown(incoming, stopped());
            tasks.spawn(async move { grpc.await.context("gRPC server") });
        }
    }

    if let Some(listener) = listeners.metrics {
        let sampler = dashboard.sampler.clone();
        let stop_sampling = stop.subscribe();
        tasks.spawn(async move {
            sampler.run(stop_sampling).await;
            Ok(())
        });
        let router = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = metrics.clone();
                    async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
                }),
            )
            .merge(dashboard.routes());
        let router = flotilla_http::auth::guard(router, security.auth.clone());
        serve_http(&mut tasks, listener, router, security, stopped(), "metrics server")?;
    }
    Ok(tasks)
}

/// Serves `router` on `listener`, over TLS when `security` says so, until `stop` completes.
fn serve_http(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    listener: TcpListener,
    router: axum::Router,
    security: &security::Security,
    stop: impl Future<Output = ()> + Send + 'static,
    name: &'static str,
) -> anyhow::Result<()> {
    match &security.tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls.clone(), name)?;
            let server = axum::serve(listener, router).with_graceful_shutdown(stop);
            tasks.spawn(async move { server.await.context(name) });
        }
        None => {
            // No Nagle delay on small responses (headers and body may leave in separate writes).
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let server = axum::serve(listener, router).with_graceful_shutdown(stop);
            tasks.spawn(async move { server.await.context(name) });
        }
    }
    Ok(())
}

/// Waits for the server tasks to end, at most `limit`.
pub async fn drain_tasks(mut tasks: tokio::task::JoinSet<anyhow::Result<()>>, limit: Duration) {
    let drain = async {
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result.context("server task panicked").and_then(|r| r) {
                tracing::warn!(error = %e, "error while draining");
            }
        }
    };
    if tokio::time::timeout(limit, drain).await.is_err() {
        tracing::warn!(timeout_secs = limit.as_secs(), "exit timeout reached with requests still in flight");
    }
}
