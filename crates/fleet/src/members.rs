//! The router's view of the fleet: members keyed by id, fed by registrations (the embedded
//! registry's HTTP endpoint, or NATS JetStream KV), expired when a worker stops refreshing its
//! registration — unless the registry itself is unreachable, when the last-known view holds.

use crate::events::Events;
use crate::link::Link;
use crate::member::Member;
use crate::metrics::FleetMetrics;
use crate::record::{validate, WorkerRecord, WorkerState};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A worker the view did not have.
    Joined,
    /// A newer record of a known worker.
    Refreshed,
    /// An older or repeated record: ignored.
    Ignored,
}

/// The members, and what happens when they change.
pub struct Members {
    map: RwLock<BTreeMap<String, Arc<Member>>>,
    /// A worker not heard from for this long leaves the view.
    pub ttl: Duration,
    /// The registry cannot be reached: nobody expires (routers keep routing on the last view).
    frozen: AtomicBool,
    pub events: Arc<Events>,
    pub metrics: FleetMetrics,
    /// Called with each member that joins (the router starts its probe).
    on_join: Box<dyn Fn(Arc<Member>) + Send + Sync>,
    /// The capacity per engine instance workers measured, by model and hardware kind, kept after
    /// they leave: what a new worker stands in at until it has measured its own.
    measured: RwLock<HashMap<(String, String), f64>>,
    /// How the router reaches its workers (the fleet token).
    link: Link,
}

impl Members {
    pub fn new(
        ttl: Duration,
        events: Arc<Events>,
        metrics: FleetMetrics,
        on_join: impl Fn(Arc<Member>) + Send + Sync + 'static,
        link: Link,
    ) -> Self {
        Self {
            link,
            map: RwLock::new(BTreeMap::new()),
            ttl,
            frozen: AtomicBool::new(false),
            events,
            metrics,
            on_join: Box::new(on_join),
            measured: RwLock::new(HashMap::new()),
        }
    }

    /// Every member, by id.
    pub fn all(&self) -> Vec<Arc<Member>> {
        self.map.read().values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Member>> {
        self.map.read().get(id).cloned()
    }

    /// The fleet's usual latency for `model` now (median of members' lanes), a new lane's start.
    fn usual_latency(&self) -> Duration {
        let mut v: Vec<f64> = Vec::new();
        for m in self.map.read().values() {
            for (_, _, base, _, _) in m.lanes_view() {
                v.push(base);
            }
        }
        if v.is_empty() {
            return Duration::from_millis(1);
        }
        v.sort_by(f64::total_cmp);
        Duration::from_nanos(v[v.len() / 2] as u64)
    }

    /// What a worker that has not measured its capacity for `model` yet stands in at: the
    /// capacity per instance measured on its hardware kind (else the least measured on any),
    /// times its instances.
    pub fn stand_in(&self, model: &str, hardware: &str, instances: usize) -> Option<f64> {
        let measured = self.measured.read();
        let per_instance = measured
            .get(&(model.to_string(), hardware.to_string()))
            .copied()
            .or_else(|| measured.iter().filter(|((m, _), _)| m == model).map(|(_, c)| *c).min_by(f64::total_cmp))?;
        Some(per_instance * instances.max(1) as f64)
    }

    /// Takes a worker's registration.
    pub fn apply(&self, record: WorkerRecord) -> Result<Applied, String> {
        validate(&record)?;
        {
            let mut measured = self.measured.write();
            for o in &record.models {
                if let Some(c) = o.capacity_rps.filter(|c| *c > 0.0) {
                    measured.insert((o.name.clone(), record.hardware.clone()), c / o.instances.max(1) as f64);
                }
            }
        }
        let existing = self.get(&record.id);
        if let Some(m) = &existing {
            let old = m.record();
            let same_place = old.grpc == record.grpc && old.started_ms == record.started_ms;
            if same_place {
                if !record.newer_than(&old) {
                    m.touch();
                    return Ok(Applied::Ignored);
                }
                self.note_state_change(&old, &record);
                m.refresh(record);
                self.update_gauges();
                return Ok(Applied::Refreshed);
            }
            if record.started_ms < old.started_ms {
                return Ok(Applied::Ignored);
            }
        }
        // New worker, or a new incarnation / address of a known one: a fresh member.
        let id = record.id.clone();
        let detail = format!(
            "{} {} at {} ({} models)",
            record.capacity_class.as_str(),
            record.hardware,
            record.grpc,
            record.models.len()
        );
        let member = Arc::new(Member::new(record, self.usual_latency(), &self.link)?);
        if let Some(old) = self.map.write().insert(id.clone(), member.clone()) {
            old.removed.store(true, Ordering::Release);
        }
        self.events.push(&id, "joined", detail);
        (self.on_join)(member);
        self.update_gauges();
        Ok(Applied::Joined)
    }

    fn note_state_change(&self, old: &WorkerRecord, new: &WorkerRecord) {
        if old.state == new.state {
            return;
        }
        match new.state {
            WorkerState::Draining => self.events.push(
                &new.id,
                "draining",
                format!("preemption notice, deadline {} ms", new.deadline_ms.unwrap_or(0)),
            ),
            WorkerState::Drained => {
                let after = new.drained_after_ms.unwrap_or(0.0);
                self.metrics.drain_seconds.observe(after / 1000.0);
                self.events.push_measured(&new.id, "drained", format!("{after:.1} ms after the notice"), Some(after));
            }
            WorkerState::Serving => self.events.push(&new.id, "serving", "serving again"),
        }
    }

    /// A worker left (deregistered, or its registry entry was deleted).
    pub fn remove(&self, id: &str, kind: &'static str, detail: &str) {
        if let Some(m) = self.map.write().remove(id) {
            m.removed.store(true, Ordering::Release);
            self.metrics.outstanding.remove_label_values(&[id]).ok();
            self.events.push(id, kind, detail);
        }
        self.update_gauges();
    }

    /// Removes members not heard from within the TTL (not while the registry is unreachable).
    pub fn expire(&self) {
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let stale: Vec<String> = self
            .map
            .read()
            .values()
            .filter(|m| now.saturating_duration_since(m.seen()) > self.ttl)
            .map(|m| m.id.clone())
            .collect();
        for id in stale {
            self.remove(&id, "expired", &format!("no registration for {} ms", self.ttl.as_millis()));
        }
    }

    /// The registry went away (true) or came back (false). Coming back gives every member a
    /// full TTL to refresh its registration.
    pub fn set_frozen(&self, frozen: bool) {
        let was = self.frozen.swap(frozen, Ordering::AcqRel);
        if was && !frozen {
            for m in self.all() {
                m.touch();
            }
        }
        if was != frozen {
            tracing::warn!(
                frozen,
                "{}",
                if frozen {
                    "registry unreachable: routing on the last-known view, nobody expires"
                } else {
                    "registry reachable again"
                }
            );
        }
    }

    pub fn frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// Recomputes the members gauge.
    pub fn update_gauges(&self) {
        self.metrics.workers.reset();
        self.metrics.workers_by_hardware.reset();
        for m in self.map.read().values() {
            let r = m.record();
            self.metrics.workers.with_label_values(&[r.capacity_class.as_str(), m.state_label()]).inc();
            self.metrics.workers_by_hardware.with_label_values(&[r.capacity_class.as_str(), &r.hardware]).inc();
            for o in &r.models {
                if let Some(c) = o.capacity_rps {
                    self.metrics.capacity.with_label_values(&[&r.id, &o.name]).set(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{CapacityClass, Load, ModelOffer};

    fn record(id: &str, hardware: &str, capacity: Option<f64>, instances: usize) -> WorkerRecord {
        WorkerRecord {
            id: id.into(),
            http: "http://127.0.0.1:1".into(),
            grpc: "http://127.0.0.1:2".into(),
            capacity_class: CapacityClass::Opportunistic,
            hardware: hardware.into(),
            state: WorkerState::Serving,
            deadline_ms: None,
            drained_after_ms: None,
            models: vec![ModelOffer {
                name: "m".into(),
                versions: vec!["1".into()],
                capacity_rps: capacity,
                latency_target_ms: 100.0,
                service_ms: None,
                instances,
            }],
            load: Load::default(),
            features: false,
            drift: false,
            started_ms: 1,
            seq: 1,
            heartbeat_ms: 1000,
            applied_digest: None,
        }
    }

    #[tokio::test]
    async fn joins_refreshes_expiry_and_stand_in_capacity() {
        let metrics = FleetMetrics::new(&prometheus::Registry::new());
        let members =
            Members::new(Duration::from_millis(50), Arc::new(Events::default()), metrics, |_| {}, Link::default());
        assert_eq!(members.stand_in("m", "a", 2), None);
        assert_eq!(members.apply(record("w1", "a", Some(100.0), 4)), Ok(Applied::Joined));
        assert_eq!(members.apply(record("w1", "a", Some(100.0), 4)), Ok(Applied::Ignored), "same seq");
        let mut newer = record("w1", "a", Some(100.0), 4);
        newer.seq = 2;
        assert_eq!(members.apply(newer), Ok(Applied::Refreshed));
        members.apply(record("w2", "b", Some(60.0), 6)).unwrap();
        // per instance: a 25, b 10; an unknown kind stands in at the least
        assert_eq!(members.stand_in("m", "a", 2), Some(50.0));
        assert_eq!(members.stand_in("m", "c", 3), Some(30.0));
        assert_eq!(members.stand_in("other", "a", 3), None);
        assert!(members.apply(record("bad id", "a", None, 1)).is_err());
        // nobody expires while the registry is away; everybody does once it is back and silent
        members.set_frozen(true);
        tokio::time::sleep(Duration::from_millis(80)).await;
        members.expire();
        assert_eq!(members.all().len(), 2);
        members.set_frozen(false);
        members.expire();
        assert_eq!(members.all().len(), 2, "coming back gives everyone a full TTL");
        tokio::time::sleep(Duration::from_millis(80)).await;
        members.expire();
        assert!(members.all().is_empty());
        assert_eq!(members.stand_in("m", "a", 1), Some(25.0), "what was measured outlives the worker");
        let kinds: Vec<&str> = members.events.since(None).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["joined", "joined", "expired", "expired"]);
    }
}
