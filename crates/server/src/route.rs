//! `flotilla route`: the fleet router. The same HTTP and gRPC adapters as a worker, over
//! [`flotilla_fleet::router::Fleet`] instead of a model repository, plus the fleet's own
//! endpoints (registration, `/v2/fleet`, pass-through to workers).

use crate::config::{PolicyArg, RouteConfig};
use crate::{drain_tasks, spawn_listeners, Listeners};
use anyhow::Context;
use flotilla_core::service::ServiceOptions;
use flotilla_core::Api;
use flotilla_fleet::balance::Policy;
use flotilla_fleet::nats::Kv;
use flotilla_fleet::router::{Fleet, Settings};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The router's settings from its flags.
pub fn settings(config: &RouteConfig) -> anyhow::Result<Settings> {
    let percent = |p: f32, flag: &str| -> anyhow::Result<f32> {
        anyhow::ensure!((0.0..=1000.0).contains(&p), "{flag} must be a percentage from 0 to 1000");
        Ok(p / 100.0)
    };
    anyhow::ensure!(config.max_attempts >= 1, "--max-attempts must be at least 1");
    anyhow::ensure!(config.probe_interval_ms >= 1, "--probe-interval-ms must be at least 1");
    Ok(Settings {
        policy: match config.policy {
            PolicyArg::ElasticFirst => Policy::ElasticFirst,
            PolicyArg::Balanced => Policy::Balanced,
            PolicyArg::GuaranteedFirst => Policy::GuaranteedFirst,
        },
        max_attempts: config.max_attempts,
        attempt_timeout: Duration::from_millis(config.attempt_timeout_ms.max(1)),
        retry_percent: percent(config.retry_budget_percent, "--retry-budget-percent")?,
        retry_min_per_sec: config.retry_min_per_sec,
        hedge_models: config.hedge.clone(),
        hedge_percent: percent(config.hedge_budget_percent, "--hedge-budget-percent")?,
        eject_after: config.eject_after.max(1),
        eject_backoff: Duration::from_millis(config.eject_backoff_ms),
        probe_interval: Duration::from_millis(config.probe_interval_ms),
        probe_timeout: Duration::from_millis((config.probe_interval_ms * 3 / 2).max(150)),
        ..Settings::default()
    })
}

/// Runs the router until `shutdown`, then stops accepting and lets requests in flight finish.
pub async fn route(
    config: RouteConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let security = crate::security::Security::from_args(&config.security)?;
    let mut settings = settings(&config)?;
    settings.link = security.link.clone();
    let options = ServiceOptions { server_name: config.server_name.clone(), ..ServiceOptions::default() };
    let fleet = Fleet::new(settings, options, Duration::from_millis(config.worker_ttl_ms.max(1)));
    let registry = match config.registry.as_str() {
        "embedded" => None,
        url if url.starts_with("nats://") => Some(Arc::new(Kv::new(url, &config.registry_bucket))),
        other => anyhow::bail!("--registry {other:?}: expected `embedded` or a NATS address nats://HOST:PORT"),
    };
    tracing::info!(
        http = %listeners.http.local_addr()?,
        grpc = %listeners.grpc.local_addr()?,
        metrics = %listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_else(|| "disabled".into()),
        registry = %config.registry,
        policy = fleet.settings.policy.as_str(),
        desired_state = %config.desired_state.display(),
        "listening"
    );
    let expiry = fleet.spawn_expiry();
    let control = fleet.spawn_control(Some(config.desired_state.clone()), registry.clone());
    let drift = flotilla_fleet::drift::FleetDrift::spawn(fleet.clone());
    let watch = registry.clone().map(|kv| flotilla_fleet::nats::spawn_watch(kv, fleet.members.clone()));
    let mirror = registry.clone().map(|kv| flotilla_fleet::leases::spawn_mirror(kv, fleet.clone()));
    // With a shared registry one router at a time places models (the control lease).
    let lease = registry.clone().map(|kv| {
        fleet.leader.store(false, std::sync::atomic::Ordering::Release);
        flotilla_fleet::nats::spawn_lease(
            kv,
            fleet.router_id.clone(),
            fleet.leader.clone(),
            fleet.lease.clone(),
            fleet.members.events.clone(),
        )
    });

    let extra = flotilla_fleet::http::router_routes(fleet.clone(), registry, config.max_request_bytes)
        .merge(flotilla_graphql::routes(flotilla_graphql::Sources::router(fleet.clone()), config.max_request_bytes));
    let http_router = flotilla_http::router(
        fleet.clone(),
        flotilla_http::HttpOptions {
            max_request_bytes: config.max_request_bytes,
            features: None,
            drift: None,
            auth: security.auth.clone(),
        },
        extra,
    );
    let grpc_parts =
        flotilla_grpc::build(fleet.clone(), config.max_request_bytes, None).await.map_err(anyhow::Error::msg)?;
    let routes =
        grpc_parts.routes.add_service(flotilla_fleet::feast::forwarding(fleet.clone(), config.max_request_bytes));
    let (stop_tx, _) = watch::channel(false);
    let mut board = crate::dashboard::Dashboard::new(fleet.metrics().registry.clone());
    board.fleet = Some(fleet.clone());
    let mut tasks =
        spawn_listeners(listeners, http_router, routes, fleet.metrics().clone(), board, &security, &stop_tx)?;

    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested; draining"),
        Some(result) = tasks.join_next() => {
            result.context("router task panicked")??;
            anyhow::bail!("a listener stopped unexpectedly");
        }
    }
    flotilla_grpc::set_not_serving(&grpc_parts.health).await;
    stop_tx.send_replace(true);
    drain_tasks(tasks, Duration::from_secs(config.exit_timeout_secs)).await;
    expiry.abort();
    control.abort();
    drift.abort();
    if let Some(w) = watch {
        w.abort();
    }
    for task in [lease, mirror].into_iter().flatten() {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}
