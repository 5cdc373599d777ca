//! The router's view of the fleet: members keyed by id, fed by registrations (the embedded
//! registry's HTTP endpoint, or NATS JetStream KV), expired when a worker stops refreshing its
//! registration — unless the registry itself is unreachable, when the last-known view holds.

use crate::events::Events;
use crate::member::Member;
use crate::metrics::FleetMetrics;
use crate::record::{validate, WorkerRecord, WorkerState};
use parking_lot::RwLock;
use std::collections::BTreeMap;
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
}

impl Members {
    pub fn new(
        ttl: Duration,
        events: Arc<Events>,
        metrics: FleetMetrics,
        on_join: impl Fn(Arc<Member>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            map: RwLock::new(BTreeMap::new()),
            ttl,
            frozen: AtomicBool::new(false),
            events,
            metrics,
            on_join: Box::new(on_join),
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

    /// Takes a worker's registration.
    pub fn apply(&self, record: WorkerRecord) -> Result<Applied, String> {
        validate(&record)?;
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
        let member = Arc::new(Member::new(record, self.usual_latency())?);
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
        for m in self.map.read().values() {
            let r = m.record();
            self.metrics.workers.with_label_values(&[r.capacity_class.as_str(), m.state_label()]).inc();
            for o in &r.models {
                if let Some(c) = o.capacity_rps {
                    self.metrics.capacity.with_label_values(&[&r.id, &o.name]).set(c);
                }
            }
        }
    }
}
