//! The worker's side of the fleet (`flotilla serve --join`): it registers with the routers (or
//! the NATS registry) and keeps its record fresh — ready models with their measured capacity,
//! load, state — and turns a preemption notice (SIGTERM, or `POST /v2/admin/preempt`) into a
//! drain: routers are told at once, new requests are answered DRAINING (a router retries them
//! elsewhere), queued requests that cannot finish by the deadline are handed back, and the
//! requests running finish.

use crate::capacity::{cpu_allowance, process_cpu_seconds, Counters, Estimator};
use crate::events::now_ms;
use crate::nats::Kv;
use crate::record::{CapacityClass, Load, ModelOffer, WorkerRecord, WorkerState};
use flotilla_core::Service;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// The model config parameter that sets a model's latency target, in milliseconds.
pub const LATENCY_TARGET_PARAMETER: &str = "latency_target_ms";

/// Who the worker is and where it registers.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Routers' HTTP URLs (`http://host:8000`) and/or NATS URLs (`nats://host:4222`).
    pub join: Vec<String>,
    /// NATS KV bucket of the fleet's membership.
    pub bucket: String,
    pub id: String,
    pub http: String,
    pub grpc: String,
    pub class: CapacityClass,
    pub hardware: String,
    pub heartbeat: Duration,
    /// Latency target of models whose config sets none.
    pub latency_target: Duration,
    pub features: bool,
    pub drift: bool,
    /// How the worker authenticates to its routers.
    pub link: crate::link::Link,
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    state: WorkerState,
    deadline: Option<Duration>,
    drained_after: Option<Duration>,
}

/// What a preemption notice did.
#[derive(Debug, Clone, Serialize)]
pub struct PreemptReport {
    pub state: WorkerState,
    pub deadline_ms: u64,
    /// Queued requests handed back at once (they would not finish by the deadline).
    pub handed_back: usize,
    /// Requests still in the worker (running, or queued early enough to finish).
    pub in_flight: usize,
}

/// The worker's agent.
pub struct Agent {
    settings: AgentSettings,
    service: Arc<Service>,
    started_ms: u64,
    seq: AtomicU64,
    drain: Mutex<Drain>,
    estimator: Mutex<Estimator>,
    wake: Notify,
    http: reqwest::Client,
    kvs: Vec<Arc<Kv>>,
    routers: Vec<String>,
    drained: watch::Sender<bool>,
    /// Targets whose last publish failed (warned once until they answer again).
    failing: Mutex<Vec<String>>,
    /// Models served from the routers' artifacts (digest-based sync); None without a router.
    pub syncer: Option<Arc<crate::sync::Syncer>>,
    /// The leases of the single-consumer sources this worker streams.
    pub leases: Arc<crate::leases::SourceLeases>,
}

impl Agent {
    pub fn new(settings: AgentSettings, service: Arc<Service>) -> Arc<Self> {
        let (kvs, routers): (Vec<String>, Vec<String>) =
            settings.join.iter().cloned().partition(|u| u.starts_with("nats://"));
        let kvs = kvs.iter().map(|u| Arc::new(Kv::new(u, &settings.bucket))).collect();
        let routers: Vec<String> = routers.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        let syncer = (!routers.is_empty()).then(|| {
            let http = settings.link.http(Duration::from_secs(120));
            crate::sync::Syncer::new(&settings.id, service.clone(), http)
        });
        Arc::new(Self {
            syncer,
            leases: crate::leases::SourceLeases::new(&settings.id, &settings.join, &settings.bucket, &settings.link),
            started_ms: now_ms() as u64,
            seq: AtomicU64::new(0),
            drain: Mutex::new(Drain { state: WorkerState::Serving, deadline: None, drained_after: None }),
            estimator: Mutex::new(Estimator::new(cpu_allowance())),
            wake: Notify::new(),
            http: settings.link.http(Duration::from_millis(1000)),
            kvs,
            routers,
            drained: watch::channel(false).0,
            failing: Mutex::new(Vec::new()),
            settings,
            service,
        })
    }

    pub fn id(&self) -> &str {
        &self.settings.id
    }

    /// A router said the assignment's digest is now `digest`: sync from the first router.
    pub fn poke_sync(&self, digest: &str) -> bool {
        match (&self.syncer, self.routers.first()) {
            (Some(s), Some(r)) => {
                s.want(r, digest);
                true
            }
            _ => false,
        }
    }

    /// Publishes a fresh record soon (models came or went).
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    /// Refreshes the registration every heartbeat (and when something changed) until `stop`.
    pub fn spawn(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let agent = self.clone();
        if let Some(syncer) = &self.syncer {
            let weak = Arc::downgrade(self);
            syncer.spawn(
                move || {
                    if let Some(a) = weak.upgrade() {
                        a.changed();
                    }
                },
                stop.clone(),
            );
        }
        tokio::spawn(async move {
            let mut next_measure = Instant::now();
            loop {
                if Instant::now() >= next_measure {
                    agent.measure();
                    next_measure = Instant::now() + agent.settings.heartbeat;
                }
                let record = agent.record();
                agent.publish(&record).await;
                tokio::select! {
                    _ = tokio::time::sleep_until(next_measure.into()) => {}
                    _ = agent.wake.notified() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        })
    }

    /// Reads the counters the capacity is learnt from.
    fn measure(&self) {
        let loaded = self.service.repository.loaded();
        let mut counters = HashMap::new();
        for (name, model) in loaded.iter() {
            let mut c = Counters::default();
            for mv in model.versions.values() {
                let s = mv.stats.snapshot();
                c.requests += s.success.count;
                c.busy_ns += s.batches.values().map(|[i, e, o]| i.ns + e.ns + o.ns).sum::<u64>();
            }
            counters.insert(name.clone(), c);
        }
        self.estimator.lock().update(&counters, process_cpu_seconds());
    }

    /// The record as of now.
    pub fn record(&self) -> WorkerRecord {
        let loaded = self.service.repository.loaded();
        let mut names: Vec<&String> = loaded.keys().collect();
        names.sort();
        let estimator = self.estimator.lock();
        let mut queued = 0u64;
        let models = names
            .into_iter()
            .filter_map(|name| {
                let model = &loaded[name];
                let latest = model.versions.values().next_back()?;
                queued += model.versions.values().map(|v| v.scheduler.queued() as u64).sum::<u64>();
                let target_ms = latest
                    .config
                    .parameters
                    .get(LATENCY_TARGET_PARAMETER)
                    .and_then(|p| p.string_value.trim().parse::<f64>().ok())
                    .filter(|t| *t > 0.0)
                    .unwrap_or(self.settings.latency_target.as_secs_f64() * 1000.0);
                let instances = latest.scheduler.instances();
                Some(ModelOffer {
                    name: name.clone(),
                    versions: model.versions.keys().map(u64::to_string).collect(),
                    capacity_rps: estimator.capacity(name, instances, target_ms / 1000.0),
                    latency_target_ms: target_ms,
                    service_ms: estimator.service_time(name).map(|s| s * 1000.0),
                    instances,
                })
            })
            .collect();
        let drain = *self.drain.lock();
        WorkerRecord {
            id: self.settings.id.clone(),
            http: self.settings.http.clone(),
            grpc: self.settings.grpc.clone(),
            capacity_class: self.settings.class,
            hardware: self.settings.hardware.clone(),
            state: drain.state,
            deadline_ms: drain.deadline.map(|d| d.as_millis() as u64),
            drained_after_ms: drain.drained_after.map(|d| d.as_secs_f64() * 1000.0),
            models,
            load: Load { in_flight: self.service.in_flight() as u64, queued },
            features: self.settings.features,
            drift: self.settings.drift,
            started_ms: self.started_ms,
            seq: self.seq.fetch_add(1, Ordering::AcqRel) + 1,
            heartbeat_ms: self.settings.heartbeat.as_millis() as u64,
            applied_digest: self.syncer.as_ref().map(|s| s.applied_digest()),
        }
    }

    /// Sends `record` to every router and registry at once.
    async fn publish(&self, record: &WorkerRecord) {
        let sends = self
            .routers
            .iter()
            .map(|r| {
                let url = format!("{r}/v2/fleet/workers/{}", record.id);
                let request = self.http.put(url).json(record);
                let syncer = self.syncer.clone();
                async move {
                    let result = match request.send().await {
                        Ok(resp) if resp.status().is_success() => {
                            // The router's answer names the digest this worker should have.
                            if let (Some(syncer), Ok(answer)) = (syncer, resp.json::<serde_json::Value>().await) {
                                if let Some(d) = answer.get("desired_digest").and_then(|d| d.as_str()) {
                                    syncer.want(r, d);
                                }
                            }
                            Ok(())
                        }
                        Ok(resp) => {
                            let status = resp.status();
                            Err(format!("{status}: {}", resp.text().await.unwrap_or_default()))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    (r.clone(), result)
                }
            })
            .collect::<Vec<_>>();
        let puts = self.kvs.iter().map(|kv| async move { (kv.url().to_string(), kv.put(record).await) });
        let (a, b) = futures::future::join(futures::future::join_all(sends), futures::future::join_all(puts)).await;
        for (target, result) in a.into_iter().chain(b) {
            let mut failing = self.failing.lock();
            match result {
                Ok(()) => {
                    if let Some(i) = failing.iter().position(|t| *t == target) {
                        failing.swap_remove(i);
                        tracing::info!(target = %target, "registered with the fleet again");
                    }
                }
                Err(e) if !failing.contains(&target) => {
                    tracing::warn!(target = %target, error = %e, "cannot register with the fleet; retrying every heartbeat");
                    failing.push(target);
                }
                Err(_) => {}
            }
        }
    }

    /// A preemption notice with `deadline` to go (repeated notices report the first one's drain).
    pub async fn preempt(self: &Arc<Self>, deadline: Duration) -> PreemptReport {
        let notice = Instant::now();
        let first = {
            let mut d = self.drain.lock();
            if d.state == WorkerState::Serving {
                *d = Drain { state: WorkerState::Draining, deadline: Some(deadline), drained_after: None };
                true
            } else {
                false
            }
        };
        let handed_back = if first { self.service.preempt(notice + deadline) } else { 0 };
        if first {
            // Another worker takes up the sources this one streams.
            self.leases.leave();
        }
        if first {
            tracing::warn!(deadline_ms = deadline.as_millis() as u64, handed_back, "preemption notice: draining");
            // Tell the routers now, not at the next heartbeat.
            let record = self.record();
            let _ = tokio::time::timeout(Duration::from_millis(500), self.publish(&record)).await;
            self.spawn_drain(notice, deadline);
        }
        let d = *self.drain.lock();
        PreemptReport {
            state: d.state,
            deadline_ms: d.deadline.unwrap_or(deadline).as_millis() as u64,
            handed_back,
            in_flight: self.service.in_flight(),
        }
    }

    /// Watches the drain: at the deadline, hands back whatever is still queued; when nothing
    /// is left, records notice→drained and tells the routers.
    fn spawn_drain(self: &Arc<Self>, notice: Instant, deadline: Duration) {
        let agent = self.clone();
        tokio::spawn(async move {
            let mut past_deadline = false;
            loop {
                if agent.service.in_flight() == 0 {
                    break;
                }
                if !past_deadline && notice.elapsed() >= deadline {
                    past_deadline = true;
                    let n = agent.service.hand_back(Instant::now());
                    tracing::warn!(handed_back = n, "preemption deadline reached; queued requests handed back");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let after = notice.elapsed();
            {
                let mut d = agent.drain.lock();
                d.state = WorkerState::Drained;
                d.drained_after = Some(after);
            }
            tracing::warn!(drained_after_ms = after.as_secs_f64() * 1000.0, "drained: no request left");
            let record = agent.record();
            agent.publish(&record).await;
            agent.drained.send_replace(true);
        });
    }

    /// Waits until drained after a notice, at most `limit`.
    pub async fn wait_drained(&self, limit: Duration) -> bool {
        let mut rx = self.drained.subscribe();
        let drained = tokio::time::timeout(limit, rx.wait_for(|d| *d)).await.is_ok();
        drained
    }

    /// Deregisters from every router and registry (on the way out).
    pub async fn leave(&self) {
        self.leases.leave();
        self.leases.left(Duration::from_secs(2)).await;
        let id = &self.settings.id;
        let deletes = self.routers.iter().map(|r| {
            let url = format!("{r}/v2/fleet/workers/{id}");
            let request = self.http.delete(url);
            async move {
                let _ = request.send().await;
            }
        });
        let kv_deletes = self.kvs.iter().map(|kv| async move {
            let _ = kv.delete(id).await;
        });
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            futures::future::join(futures::future::join_all(deletes), futures::future::join_all(kv_deletes)),
        )
        .await;
    }
}
