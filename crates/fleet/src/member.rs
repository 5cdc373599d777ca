//! One worker as the router knows it: its latest record, a gRPC channel to it, its health
//! (draining, ejected, failures in a row) and, per model, the load signals the balancer reads.

use crate::link::{Authorized, Link};
use crate::load::{Ewma, PeakEwma, Rate};
use crate::record::{WorkerRecord, WorkerState};
use arc_swap::ArcSwap;
use flotilla_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Load signals of one worker for one model.
#[derive(Debug)]
pub struct Lane {
    pub peak: PeakEwma,
    pub base: Ewma,
    pub rate: Rate,
    pub outstanding: AtomicUsize,
    /// The worker said it does not have the model (a stale record): skipped until this passes.
    pub stale_until: Mutex<Option<Instant>>,
}

impl Lane {
    fn new(initial: Duration) -> Self {
        Self {
            peak: PeakEwma::new(initial, Duration::from_secs(2)),
            base: Ewma::new(initial, Duration::from_secs(5)),
            rate: Rate::new(Duration::from_secs(1)),
            outstanding: AtomicUsize::new(0),
            stale_until: Mutex::new(None),
        }
    }

    pub fn stale(&self) -> bool {
        self.stale_until.lock().is_some_and(|t| Instant::now() < t)
    }
}

/// Why a worker is out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectReason {
    /// A connection to it failed (refused, reset, closed): back as soon as a probe succeeds.
    Connection,
    /// Failures or timeouts in a row: back after a backoff, once a probe succeeds.
    Failures,
}

impl EjectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EjectReason::Connection => "connection",
            EjectReason::Failures => "failures",
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    /// Draining, learnt in-band (a DRAINING answer) before its record says so.
    draining: bool,
    ejected: Option<(EjectReason, Instant)>,
    /// Failures in a row (reset by a success).
    failures: u32,
    /// Ejections for failures so far (the backoff doubles with each).
    ejections: u32,
    /// The latest probe's answer (ready), true until a probe says otherwise.
    probe_not_ready: bool,
    /// Probes in a row that got no answer in time.
    probe_misses: u32,
}

/// A worker in the router's view.
pub struct Member {
    pub id: String,
    record: ArcSwap<WorkerRecord>,
    seen: Mutex<Instant>,
    pub client: GrpcInferenceServiceClient<Authorized>,
    /// The channel `client` uses (other services of the worker ride on it too).
    pub channel: Authorized,
    health: Mutex<Health>,
    lanes: RwLock<HashMap<String, Arc<Lane>>>,
    /// Requests outstanding on it (every model).
    pub outstanding: AtomicUsize,
    /// Removed from the view: its probe task ends.
    pub removed: AtomicBool,
    /// It has answered a request (the first answer is an event: a new worker takes traffic).
    pub answered: AtomicBool,
    /// Counts the times it was taken out for not answering: requests waiting on it give up
    /// (and are retried elsewhere when they may be).
    gone: tokio::sync::watch::Sender<u64>,
    /// Latency a new lane starts from (the fleet's usual latency when it joined).
    initial_latency: Duration,
}

// === impl Member ===

impl Member {
    /// A member for `record` over a lazily connected channel (no I/O here).
    pub fn new(record: WorkerRecord, initial_latency: Duration, link: &Link) -> Result<Self, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(record.grpc.clone())
            .map_err(|e| format!("worker '{}': grpc address {:?}: {e}", record.id, record.grpc))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = link.grpc(endpoint).map_err(|e| format!("worker '{}': {e}", record.id))?;
        let client = GrpcInferenceServiceClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        Ok(Self {
            id: record.id.clone(),
            record: ArcSwap::from_pointee(record),
            seen: Mutex::new(Instant::now()),
            client,
            channel,
            health: Mutex::new(Health::default()),
            lanes: RwLock::new(HashMap::new()),
            outstanding: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            gone: tokio::sync::watch::channel(0).0,
            initial_latency,
        })
    }

    pub fn record(&self) -> Arc<WorkerRecord> {
        self.record.load_full()
    }

    /// Takes a newer record of the same incarnation and address; refreshes its TTL.
    pub fn refresh(&self, record: WorkerRecord) {
        if record.state == WorkerState::Serving {
            // A serving record clears an in-band draining mark only from a new incarnation.
            let old = self.record.load();
            if record.started_ms != old.started_ms {
                self.health.lock().draining = false;
            }
        }
        self.record.store(Arc::new(record));
        self.touch();
    }

    pub fn touch(&self) {
        *self.seen.lock() = Instant::now();
    }

    pub fn seen(&self) -> Instant {
        *self.seen.lock()
    }

    /// The lane of `model`, made on first use.
    pub fn lane(&self, model: &str) -> Arc<Lane> {
        if let Some(l) = self.lanes.read().get(model) {
            return l.clone();
        }
        let mut lanes = self.lanes.write();
        lanes.entry(model.to_string()).or_insert_with(|| Arc::new(Lane::new(self.initial_latency))).clone()
    }

    /// Usual latency of `model` on this worker, if it has served any.
    pub fn lane_latency(&self, model: &str) -> Option<f64> {
        self.lanes.read().get(model).map(|l| l.base.value_ns())
    }

    /// Takes requests: serving, not draining, not ejected, and its last probe said ready.
    pub fn available(&self) -> bool {
        if self.record.load().state != WorkerState::Serving {
            return false;
        }
        let h = self.health.lock();
        !h.draining && h.ejected.is_none() && !h.probe_not_ready
    }

    pub fn draining(&self) -> bool {
        self.record.load().state != WorkerState::Serving || self.health.lock().draining
    }

    /// Marks it draining at once (it answered DRAINING); returns whether that is news.
    pub fn mark_draining(&self) -> bool {
        !std::mem::replace(&mut self.health.lock().draining, true)
    }

    pub fn ejected(&self) -> Option<EjectReason> {
        self.health.lock().ejected.map(|(r, _)| r)
    }

    /// Takes it out of rotation; returns whether it was in rotation before.
    pub fn eject(&self, reason: EjectReason, base_backoff: Duration) -> bool {
        let mut h = self.health.lock();
        if h.ejected.is_some() {
            return false;
        }
        let until = match reason {
            EjectReason::Connection => Instant::now(),
            EjectReason::Failures => {
                h.ejections = h.ejections.saturating_add(1);
                let factor = 1u32 << (h.ejections - 1).min(5);
                Instant::now() + base_backoff.saturating_mul(factor)
            }
        };
        h.ejected = Some((reason, until));
        h.failures = 0;
        drop(h);
        if reason == EjectReason::Connection {
            self.gone.send_modify(|g| *g += 1);
        }
        true
    }

    /// Resolves when the worker is next taken out for not answering.
    pub fn gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.gone.subscribe();
        async move {
            let _ = rx.changed().await;
        }
    }

    /// A success: failures in a row start again.
    pub fn success(&self) {
        let mut h = self.health.lock();
        h.failures = 0;
    }

    /// A failure or timeout; returns the failures in a row.
    pub fn failure(&self) -> u32 {
        let mut h = self.health.lock();
        h.failures = h.failures.saturating_add(1);
        h.failures
    }

    /// A probe's answer (`Some(ready)`, or None when it failed). Returns whether the worker
    /// came back into rotation with it.
    pub fn probed(&self, ready: Option<bool>) -> bool {
        let mut h = self.health.lock();
        match ready {
            None => false,
            Some(ready) => {
                h.probe_not_ready = !ready;
                h.probe_misses = 0;
                match h.ejected {
                    Some((_, until)) if ready && Instant::now() >= until => {
                        h.ejected = None;
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    /// A probe got no answer in time; returns the misses in a row.
    pub fn probe_missed(&self) -> u32 {
        let mut h = self.health.lock();
        h.probe_misses = h.probe_misses.saturating_add(1);
        h.probe_misses
    }

    /// The state to show: serving, draining, drained, ejected.
    pub fn state_label(&self) -> &'static str {
        let r = self.record.load();
        match r.state {
            WorkerState::Drained => "drained",
            WorkerState::Draining => "draining",
            WorkerState::Serving => {
                let h = self.health.lock();
                if h.ejected.is_some() {
                    "ejected"
                } else if h.draining {
                    "draining"
                } else if h.probe_not_ready {
                    "not_ready"
                } else {
                    "serving"
                }
            }
        }
    }

    /// Load signals for the fleet view.
    pub fn lanes_view(&self) -> Vec<(String, f64, f64, f64, usize)> {
        let lanes = self.lanes.read();
        let mut v: Vec<_> = lanes
            .iter()
            .map(|(m, l)| {
                (
                    m.clone(),
                    l.peak.estimate_ns(),
                    l.base.value_ns(),
                    l.rate.per_second(),
                    l.outstanding.load(Ordering::Relaxed),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Counts a request as outstanding on a worker and its lane until dropped.
pub struct Outstanding {
    member: Arc<Member>,
    lane: Arc<Lane>,
}

impl Outstanding {
    pub fn enter(member: &Arc<Member>, lane: &Arc<Lane>) -> Self {
        member.outstanding.fetch_add(1, Ordering::AcqRel);
        lane.outstanding.fetch_add(1, Ordering::AcqRel);
        lane.rate.tick();
        Self { member: member.clone(), lane: lane.clone() }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.member.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.lane.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}
