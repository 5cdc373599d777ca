//! The router: the protocol's operations answered by the fleet. It holds no models. Inference
//! goes to one worker ([`crate::forward`]); metadata and config come from a worker that serves
//! the model; statistics and the repository index are merged from every worker; load and
//! unload go to every worker whose repository has the model.

use crate::balance::Policy;
use crate::events::Events;
use crate::load::LatencyWindow;
use crate::member::{EjectReason, Member};
use crate::members::Members;
use crate::metrics::FleetMetrics;
use flotilla_core::api::{Api, Readiness};
use flotilla_core::metrics::Metrics;
use flotilla_core::protocol::LoadOptions;
use flotilla_core::repository::IndexEntry;
use flotilla_core::service::{ModelMetadata, ServiceOptions, VersionStats};
use flotilla_core::{Error, ErrorKind, InferRequest, InferResponse, Result};
use flotilla_grpc::convert;
use flotilla_proto::inference as pb;
use flotilla_proto::inference::ModelConfig;
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tower::retry::budget::TpsBudget;

/// How the router routes (flags of `flotilla route`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    /// Attempts per request, the first included.
    pub max_attempts: usize,
    /// Longest wait for one attempt when the request has no deadline of its own.
    pub attempt_timeout: Duration,
    /// Retry budget: this share of requests, plus `retry_min_per_sec` retries a second.
    pub retry_percent: f32,
    pub retry_min_per_sec: u32,
    /// Models whose requests are hedged (`*` = all); empty = none.
    pub hedge_models: Vec<String>,
    /// Hedge budget: at most this share of extra requests.
    pub hedge_percent: f32,
    /// Latencies a model needs before its p95 is trusted as the hedging delay.
    pub hedge_min_samples: u64,
    /// Failures or timeouts in a row that take a worker out of rotation.
    pub eject_after: u32,
    /// First backoff of a worker ejected for failures (doubles with each ejection, up to 32×).
    pub eject_backoff: Duration,
    /// How often each worker is probed (gRPC ServerReady).
    pub probe_interval: Duration,
    /// How long a probe may take (two in a row without an answer take the worker out).
    pub probe_timeout: Duration,
    /// A worker that says it lacks a model its record lists is skipped for it this long.
    pub stale_for: Duration,
    /// Outstanding requests per worker before it counts as saturated, when its capacity is unknown.
    pub default_limit: usize,
    /// The least outstanding limit of any worker.
    pub min_limit: usize,
    /// Time to wait for the answers of metadata, statistics, index, load and unload calls.
    pub control_timeout: Duration,
    /// How the router authenticates to its workers.
    pub link: crate::link::Link,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policy: Policy::ElasticFirst,
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(30),
            retry_percent: 0.2,
            retry_min_per_sec: 3,
            hedge_models: Vec::new(),
            hedge_percent: 0.05,
            hedge_min_samples: 100,
            eject_after: 5,
            eject_backoff: Duration::from_secs(1),
            probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(150),
            stale_for: Duration::from_secs(2),
            default_limit: 64,
            min_limit: 4,
            control_timeout: Duration::from_secs(30),
            link: crate::link::Link::default(),
        }
    }
}

impl Settings {
    pub fn hedges(&self, model: &str) -> bool {
        self.hedge_models.iter().any(|m| m == "*" || m == model)
    }
}

/// Why a feature read through the router finds no worker to answer it.
pub const NO_FEATURE_WORKER: &str = "no worker with a feature store is in rotation";

/// The fleet router.
pub struct Fleet {
    pub members: Arc<Members>,
    pub settings: Settings,
    options: ServiceOptions,
    core_metrics: Metrics,
    pub metrics: FleetMetrics,
    pub(crate) retry_budget: TpsBudget,
    pub(crate) hedge_budget: TpsBudget,
    latencies: RwLock<HashMap<String, Arc<LatencyWindow>>>,
    /// For the pass-through endpoints (Feast, drift) and worker registration calls.
    pub http: reqwest::Client,
    /// The desired state in force and its traffic policies.
    pub control: crate::control::Control,
    /// This router, for work it spawns (shadow requests, version loads).
    pub(crate) me: std::sync::Weak<Fleet>,
    /// This router's name in the control lease.
    pub router_id: String,
    /// Whether this router places models and drives version loads: always with the embedded
    /// registry; with NATS, while it holds the control lease.
    pub leader: Arc<std::sync::atomic::AtomicBool>,
    /// The lease as last read (NATS registry).
    pub lease: Arc<RwLock<Option<crate::nats::Lease>>>,
    /// The fleet's drift view, merged from the workers' windows.
    pub drift: crate::drift::FleetDrift,
    /// Source leases (embedded registry): which worker consumes each single-consumer source.
    pub leases: crate::leases::LeaseTable,
}

impl Fleet {
    /// A router with no members yet; `ttl` expires workers that stop refreshing their registration.
    pub fn new(settings: Settings, options: ServiceOptions, ttl: Duration) -> Arc<Self> {
        let core_metrics = Metrics::new();
        let metrics = FleetMetrics::new(&core_metrics.registry);
        let events = Arc::new(Events::counted(metrics.events.clone()));
        let http = settings.link.http(Duration::from_secs(30));
        Arc::new_cyclic(|fleet: &std::sync::Weak<Fleet>| {
            let weak = fleet.clone();
            let members = Members::new(
                ttl,
                events,
                metrics.clone(),
                move |member| {
                    if let Some(fleet) = weak.upgrade() {
                        fleet.spawn_probe(member);
                    }
                },
                settings.link.clone(),
            );
            Fleet {
                members: Arc::new(members),
                retry_budget: TpsBudget::new(
                    Duration::from_secs(10),
                    settings.retry_min_per_sec,
                    settings.retry_percent,
                ),
                hedge_budget: TpsBudget::new(Duration::from_secs(10), 0, settings.hedge_percent),
                settings,
                options,
                core_metrics,
                metrics,
                latencies: RwLock::new(HashMap::new()),
                http,
                control: crate::control::Control::default(),
                me: fleet.clone(),
                router_id: format!(
                    "{}-{}-{:04x}",
                    std::env::var("HOSTNAME").unwrap_or_else(|_| "router".into()),
                    std::process::id(),
                    fastrand::u16(..)
                ),
                leader: Arc::new(std::sync::atomic::AtomicBool::new(true)),
                lease: Arc::new(RwLock::new(None)),
                drift: crate::drift::FleetDrift::default(),
                leases: crate::leases::LeaseTable::default(),
            }
        })
    }

    /// Whether this router places models and drives version loads now.
    pub fn leads(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn events(&self) -> &Events {
        &self.members.events
    }

    /// The worker in rotation with a feature store and the fewest requests outstanding: where
    /// the router sends feature reads (Feast's REST and gRPC, GraphQL's feature fields). `None`
    /// is answered as unavailable with [`NO_FEATURE_WORKER`].
    pub fn feature_worker(&self) -> Option<Arc<crate::member::Member>> {
        self.members
            .all()
            .into_iter()
            .filter(|m| m.available() && m.record().features)
            .min_by_key(|m| m.outstanding.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Recent latencies of `model` (the hedging delay).
    pub(crate) fn latency(&self, model: &str) -> Arc<LatencyWindow> {
        if let Some(w) = self.latencies.read().get(model) {
            return w.clone();
        }
        self.latencies.write().entry(model.to_string()).or_default().clone()
    }

    /// Probes `member` every probe interval until it leaves the view: a failed probe takes it
    /// out of rotation (a dead worker with no traffic is noticed within one interval), a ready
    /// answer brings it back.
    fn spawn_probe(&self, member: Arc<Member>) {
        let weak_member = Arc::downgrade(&member);
        let interval = self.settings.probe_interval;
        let timeout = self.settings.probe_timeout;
        let members = Arc::downgrade(&self.members);
        let metrics = self.metrics.clone();
        drop(member);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(member), Some(members)) = (weak_member.upgrade(), members.upgrade()) else { return };
                if member.removed.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                let mut client = member.client.clone();
                let answer = tokio::time::timeout(timeout, client.server_ready(pb::ServerReadyRequest {})).await;
                let ready = match answer {
                    Ok(Ok(r)) => Some(r.into_inner().ready),
                    Ok(Err(status)) => {
                        let f = crate::forward::classify(&member.id, status);
                        if f.signal == crate::forward::Signal::Connection
                            && member.eject(EjectReason::Connection, Duration::ZERO)
                        {
                            metrics.ejections.with_label_values(&["probe"]).inc();
                            members.events.push(&member.id, "ejected", format!("probe: {}", f.error.message));
                            members.update_gauges();
                        }
                        None
                    }
                    Err(_) => {
                        // Silence (a frozen process, a cut link): out after two probes in a row.
                        if member.probe_missed() >= 2 && member.eject(EjectReason::Connection, Duration::ZERO) {
                            metrics.ejections.with_label_values(&["probe"]).inc();
                            members.events.push(&member.id, "ejected", "probe: no answer in time, twice in a row");
                            members.update_gauges();
                        }
                        None
                    }
                };
                if member.probed(ready) {
                    members.events.push(&member.id, "returned", "a probe answered ready");
                    members.update_gauges();
                }
            }
        });
    }

    /// Expires workers that stopped refreshing their registration, every quarter TTL.
    pub fn spawn_expiry(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let members = self.members.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((members.ttl / 4).max(Duration::from_millis(50)));
            loop {
                tick.tick().await;
                members.expire();
            }
        })
    }

    /// Members that are in rotation, serving `model` (any model when empty).
    fn serving(&self, model: &str) -> Vec<Arc<Member>> {
        let mut v: Vec<Arc<Member>> = self
            .members
            .all()
            .into_iter()
            .filter(|m| m.available() && (model.is_empty() || m.record().offer(model, "").is_some()))
            .collect();
        v.sort_by_key(|m| m.outstanding.load(std::sync::atomic::Ordering::Relaxed));
        v
    }

    /// Members that are in rotation, whatever they serve.
    fn reachable(&self) -> Vec<Arc<Member>> {
        self.members.all().into_iter().filter(|m| m.ejected().is_none() && !m.draining()).collect()
    }

    /// Asks the members serving `model` in turn (least loaded first) until one answers; a
    /// worker's own error (unknown version, ...) is the answer, a transport failure moves on.
    async fn ask_one<T, F, Fut>(&self, model: &str, version: &str, call: F) -> Result<T>
    where
        F: Fn(Arc<Member>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let members: Vec<Arc<Member>> =
            self.serving(model).into_iter().filter(|m| m.record().offer(model, version).is_some()).collect();
        let mut last = None;
        for m in members {
            match tokio::time::timeout(self.settings.control_timeout, call(m.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(status)) => {
                    let f = crate::forward::classify(&m.id, status);
                    if f.signal != crate::forward::Signal::Connection && f.signal != crate::forward::Signal::Draining {
                        return Err(f.error);
                    }
                    last = Some(f.error);
                }
                Err(_) => last = Some(Error::unavailable(format!("worker '{}' did not answer in time", m.id))),
            }
        }
        Err(last.unwrap_or_else(|| self.model_readiness(model, version).reason.unwrap_or_else(|| no_model(model))))
    }

    /// Calls every member in `members` at once; each answer or error, by member.
    async fn ask_all<T, F, Fut>(&self, members: Vec<Arc<Member>>, call: F) -> Vec<(Arc<Member>, Result<T>)>
    where
        F: Fn(Arc<Member>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let calls = members.into_iter().map(|m| {
            let fut = call(m.clone());
            let timeout = self.settings.control_timeout;
            async move {
                let r = match tokio::time::timeout(timeout, fut).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(status)) => Err(crate::forward::classify(&m.id, status).error),
                    Err(_) => Err(Error::unavailable(format!("worker '{}' did not answer in time", m.id))),
                };
                (m, r)
            }
        });
        futures::future::join_all(calls).await
    }

    /// Whether some worker in rotation serves `model` (`version`), and why not.
    fn model_readiness(&self, model: &str, version: &str) -> Readiness {
        let members = self.members.all();
        if members.iter().any(|m| m.available() && m.record().offer(model, version).is_some()) {
            return Readiness::ready();
        }
        let listed = members.iter().any(|m| m.record().offer(model, "").is_some());
        if !listed {
            return Readiness::not_ready(no_model(model));
        }
        if !version.is_empty() && !members.iter().any(|m| m.record().offer(model, version).is_some()) {
            return Readiness::not_ready(Error::not_found(format!(
                "Request for unknown model: '{model}' version {version} is not found"
            )));
        }
        Readiness::not_ready(Error::unavailable(format!(
            "model '{model}' is not ready: no worker that serves it is in rotation"
        )))
    }
}

fn no_model(model: &str) -> Error {
    Error::not_found(format!("Request for unknown model: '{model}' is not found"))
}

/// Sums statistics of the same model version from several workers.
fn merge_stats(rows: impl IntoIterator<Item = VersionStats>) -> Vec<VersionStats> {
    let mut merged: BTreeMap<(String, String), VersionStats> = BTreeMap::new();
    for row in rows {
        let key = (row.name.clone(), row.version.clone());
        match merged.get_mut(&key) {
            None => {
                merged.insert(key, row);
            }
            Some(m) => {
                let (a, b) = (&mut m.stats, row.stats);
                a.last_inference_ms = a.last_inference_ms.max(b.last_inference_ms);
                a.inference_count += b.inference_count;
                a.execution_count += b.execution_count;
                for (x, y) in [
                    (&mut a.success, b.success),
                    (&mut a.fail, b.fail),
                    (&mut a.queue, b.queue),
                    (&mut a.compute_input, b.compute_input),
                    (&mut a.compute_infer, b.compute_infer),
                    (&mut a.compute_output, b.compute_output),
                ] {
                    x.count += y.count;
                    x.ns += y.ns;
                }
                for (size, phases) in b.batches {
                    let e = a.batches.entry(size).or_default();
                    for (x, y) in e.iter_mut().zip(phases) {
                        x.count += y.count;
                        x.ns += y.ns;
                    }
                }
            }
        }
    }
    merged.into_values().collect()
}

/// Unions repository indexes: a version is READY when any worker has it ready; otherwise the
/// first worker's state and reason stand.
fn merge_index(rows: impl IntoIterator<Item = IndexEntry>, ready_only: bool) -> Vec<IndexEntry> {
    let mut merged: BTreeMap<(String, String), IndexEntry> = BTreeMap::new();
    for row in rows {
        let key = (row.name.clone(), row.version.clone());
        match merged.get_mut(&key) {
            None => {
                merged.insert(key, row);
            }
            Some(m) if m.state != "READY" && row.state == "READY" => *m = row,
            Some(_) => {}
        }
    }
    // A model with a ready version needs no version-less "not loaded" row beside it.
    let ready_models: Vec<String> = merged.values().filter(|e| e.state == "READY").map(|e| e.name.clone()).collect();
    merged
        .into_values()
        .filter(|e| !(e.version.is_empty() && e.state.is_empty() && ready_models.contains(&e.name)))
        .filter(|e| !ready_only || e.state == "READY")
        .collect()
}

// === impl Api for Fleet ===

impl Api for Fleet {
    fn options(&self) -> &ServiceOptions {
        &self.options
    }

    fn metrics(&self) -> &Metrics {
        &self.core_metrics
    }

    fn live(&self) -> bool {
        true
    }

    /// Ready once a worker in rotation serves a model.
    fn ready(&self) -> bool {
        self.members.all().iter().any(|m| m.available() && !m.record().models.is_empty())
    }

    async fn model_ready(&self, name: &str, version: &str) -> Readiness {
        self.model_readiness(name, version)
    }

    async fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadata> {
        let request = pb::ModelMetadataRequest { name: name.into(), version: version.into() };
        let m = self
            .ask_one(name, version, |m| {
                let mut c = m.client.clone();
                let r = request.clone();
                async move { c.model_metadata(r).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(convert::metadata_from_proto(m))
    }

    async fn model_config(&self, name: &str, version: &str) -> Result<Arc<ModelConfig>> {
        let request = pb::ModelConfigRequest { name: name.into(), version: version.into() };
        let r = self
            .ask_one(name, version, |m| {
                let mut c = m.client.clone();
                let r = request.clone();
                async move { c.model_config(r).await.map(|r| r.into_inner()) }
            })
            .await?;
        r.config.map(Arc::new).ok_or_else(|| Error::internal(format!("the worker sent no config for model '{name}'")))
    }

    async fn statistics(&self, name: &str, version: &str) -> Result<Vec<VersionStats>> {
        if !name.is_empty() {
            if let Some(e) = self.model_readiness(name, version).reason.filter(|e| e.kind == ErrorKind::NotFound) {
                return Err(e);
            }
        }
        let members: Vec<Arc<Member>> =
            self.reachable().into_iter().filter(|m| name.is_empty() || m.record().offer(name, "").is_some()).collect();
        let request = pb::ModelStatisticsRequest { name: name.into(), version: version.into() };
        let answers = self
            .ask_all(members, |m| {
                let mut c = m.client.clone();
                let r = request.clone();
                async move { c.model_statistics(r).await.map(|r| r.into_inner()) }
            })
            .await;
        let rows = answers.into_iter().filter_map(|(_, r)| r.ok()).flat_map(|r| r.model_stats);
        Ok(merge_stats(rows.map(convert::stats_from_proto)))
    }

    async fn repository_index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        let request = pb::RepositoryIndexRequest { repository_name: String::new(), ready: ready_only };
        let answers = self
            .ask_all(self.reachable(), |m| {
                let mut c = m.client.clone();
                let r = request.clone();
                async move { c.repository_index(r).await.map(|r| r.into_inner()) }
            })
            .await;
        let rows = answers.into_iter().filter_map(|(_, r)| r.ok()).flat_map(|r| r.models);
        Ok(merge_index(rows.map(convert::index_from_proto), ready_only))
    }

    async fn load_model(&self, name: &str, options: LoadOptions) -> Result<()> {
        let mut parameters = HashMap::new();
        if let Some(config) = options.config {
            use pb::model_repository_parameter::ParameterChoice;
            parameters.insert(
                "config".to_string(),
                pb::ModelRepositoryParameter { parameter_choice: Some(ParameterChoice::StringParam(config)) },
            );
        }
        let request =
            pb::RepositoryModelLoadRequest { repository_name: String::new(), model_name: name.into(), parameters };
        let answers = self
            .ask_all(self.reachable(), |m| {
                let mut c = m.client.clone();
                let r = request.clone();
                async move { c.repository_model_load(r).await.map(|_| ()) }
            })
            .await;
        fan_out_result(name, "load", answers)
    }

    async fn unload_model(&self, name: &str) -> Result<()> {
        let request = pb::RepositoryModelUnloadRequest {
            repository_name: String::new(),
            model_name: name.into(),
            parameters: HashMap::new(),
        };
        let answers = self
            .ask_all(self.reachable(), |m| {
                let mut c = m.client.clone();
                let r = request.clone();
                async move { c.repository_model_unload(r).await.map(|_| ()) }
            })
            .await;
        fan_out_result(name, "unload", answers)
    }

    /// 429 before the body is read when every worker serving the model is saturated.
    fn shed_early(&self, model: &str, version: &str) -> Result<()> {
        match self.pick(model, version, &[]) {
            Err(e) if e.kind == ErrorKind::ResourceExhausted => Err(e),
            _ => Ok(()),
        }
    }

    async fn infer(&self, request: InferRequest) -> Result<InferResponse> {
        self.forward(request).await
    }

    fn forwards_header(&self, name: &str) -> bool {
        self.control.forwards_header(name)
    }
}

/// The outcome of a load or unload sent to every worker: done when every worker whose
/// repository has the model did it; not found when none has it; else the first failure.
fn fan_out_result(name: &str, what: &str, answers: Vec<(Arc<Member>, Result<()>)>) -> Result<()> {
    if answers.is_empty() {
        return Err(Error::unavailable(format!("failed to {what} '{name}': no worker is in rotation")));
    }
    let mut done = 0;
    let mut failure = None;
    let mut not_found = None;
    for (m, r) in answers {
        match r {
            Ok(()) => done += 1,
            Err(e) if e.kind == ErrorKind::NotFound => not_found = Some(e),
            Err(e) => {
                failure.get_or_insert(Error::new(e.kind, format!("worker '{}': {}", m.id, e.message)));
            }
        }
    }
    match (failure, done, not_found) {
        (Some(e), _, _) => Err(e),
        (None, 0, Some(e)) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::stats::{CountNs, StatsSnapshot};

    fn row(name: &str, version: &str, state: &str) -> IndexEntry {
        IndexEntry { name: name.into(), version: version.into(), state: state.into(), reason: String::new() }
    }

    #[test]
    fn index_union_prefers_ready() {
        let merged = merge_index(
            vec![row("a", "1", "UNAVAILABLE"), row("a", "1", "READY"), row("b", "", ""), row("a", "", "")],
            false,
        );
        assert_eq!(merged, vec![row("a", "1", "READY"), row("b", "", "")]);
        assert_eq!(merge_index(vec![row("b", "", ""), row("a", "1", "READY")], true), vec![row("a", "1", "READY")]);
    }

    #[test]
    fn stats_add_up() {
        let stats = |n: u64| VersionStats {
            name: "m".into(),
            version: "1".into(),
            stats: StatsSnapshot {
                inference_count: n,
                last_inference_ms: n,
                success: CountNs { count: n, ns: 10 * n },
                batches: [(1, [CountNs { count: n, ns: n }; 3])].into_iter().collect(),
                ..Default::default()
            },
        };
        let merged = merge_stats(vec![stats(2), stats(3)]);
        assert_eq!(merged.len(), 1);
        let s = &merged[0].stats;
        assert_eq!((s.inference_count, s.last_inference_ms, s.success.count, s.success.ns), (5, 3, 5, 50));
        assert_eq!(s.batches[&1][1], CountNs { count: 5, ns: 5 });
    }
}
