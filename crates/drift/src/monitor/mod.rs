//! Online monitoring: the serving path hands each request's inputs and outputs to a bounded
//! channel (never waiting: when it is full the request is skipped and counted); one background
//! task folds them into per-version windows, closes windows by row count or time, scores them
//! against the model's reference profile, updates the Prometheus gauges, moves alert states
//! (with hysteresis) and posts alert webhooks.

pub mod config;
#[cfg(test)]
mod tests;
pub mod window;
mod worker;

use crate::profile::{self, Profile};
use config::DriftConfig;
use flotilla_core::observe::Observer;
use flotilla_core::repository::ModelVersion;
use flotilla_core::{DataType, Tensor};
use parking_lot::{Mutex, RwLock};
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use window::{Cell, Level, Window, WindowReport};
pub use worker::Folding;
use worker::Worker;

/// Requests waiting for the aggregator; beyond this they are skipped (and counted).
pub const CHANNEL_CAPACITY: usize = 4096;
/// How often the aggregator takes what the serving path queued.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How often the sampling rate is set again from the time the worker spent.
const BUDGET_PERIOD: Duration = Duration::from_secs(1);
/// The sparsest sampling: one request in this many.
const MAX_KEEP_ONE_IN: u32 = 4096;

/// The next sampling rate (observe one request in the result) when the worker was busy
/// `share` of the last period while observing one in `k`, for a `budget` share of one core. Its
/// work is about proportional to the requests observed; it aims at 80% of the budget, and
/// samples less only once it is under half of it (no flapping around the budget).
pub fn keep_one_in(k: u32, share: f64, budget: f64) -> u32 {
    let target = 0.8 * budget;
    let wanted = f64::from(k.max(1)) * share / target;
    let next = if share > budget {
        wanted.ceil()
    } else if share < 0.5 * budget {
        wanted.floor()
    } else {
        f64::from(k)
    };
    (next as u32).clamp(1, MAX_KEEP_ONE_IN)
}

struct Observation {
    model: Arc<ModelState>,
    version: String,
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

/// A monitored model: its profile, settings, and per-version windows.
pub struct ModelState {
    pub name: String,
    pub profile: Profile,
    pub config: DriftConfig,
    /// `drift.toml` as written (empty: the defaults), for the fleet view to score alike.
    pub config_source: String,
    pca_columns: Vec<Option<usize>>,
    versions: Mutex<BTreeMap<String, VersionState>>,
    /// Requests left out by the CPU budget's sampling.
    sampled_out: prometheus::IntCounter,
}

struct VersionState {
    window: Window,
    opened: Instant,
    history: VecDeque<WindowReport>,
    /// The last closed windows, whole (newest last), for the fleet view.
    closed: VecDeque<ClosedWindow>,
    /// Per column (features, outputs, then `multivariate`): the alert state and the level
    /// that has been seen `streak` windows in a row.
    alerts: BTreeMap<String, AlertState>,
    next_index: u64,
    /// Rows folded since the rows counter was last brought up to date.
    unreported_rows: u64,
}

/// A column's alert state with hysteresis: a new level takes over once it has been seen in
/// `consecutive` windows in a row (a worker's windows, or the router's fleet windows).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct AlertState {
    pub state: Level,
    candidate: Level,
    streak: u32,
}

impl AlertState {
    /// Takes the level of the window just closed; returns the previous state when the state changed.
    pub fn step(&mut self, level: Level, consecutive: u32) -> Option<Level> {
        if level == self.candidate {
            self.streak += 1;
        } else {
            self.candidate = level;
            self.streak = 1;
        }
        if self.candidate != self.state && self.streak >= consecutive {
            let previous = self.state;
            self.state = self.candidate;
            return Some(previous);
        }
        None
    }
}

/// A closed window, whole, kept a while for the fleet view (which merges the windows the
/// workers closed; each row is counted once, when its window closes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedWindow {
    pub closed_ms: i64,
    pub window: Window,
}

/// Closed windows kept whole per version for the fleet view to collect.
const CLOSED_KEPT: usize = 16;

/// An alert state change, as posted to the webhook.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    pub model: String,
    pub version: String,
    pub feature: String,
    pub previous: Level,
    pub state: Level,
    pub window: u64,
    pub closed: String,
    /// The metrics at or above their thresholds in the window that changed the state.
    pub metrics: BTreeMap<String, f64>,
}

struct Metrics {
    score: GaugeVec,
    alert: IntGaugeVec,
    windows: IntCounterVec,
    rows: IntCounterVec,
    skipped: IntCounterVec,
    webhook_failures: IntCounterVec,
}

impl Metrics {
    fn new(registry: &prometheus::Registry) -> Metrics {
        let labels = &["model", "version"];
        let m = Metrics {
            score: flotilla_core::metrics::float_gauge(
                "flotilla_drift_score",
                "Drift metric of the last closed window, per feature (and output)",
                &["model", "version", "feature", "metric"],
            ),
            alert: flotilla_core::metrics::gauge(
                "flotilla_drift_alert",
                "Alert state per feature after hysteresis: 0 ok, 1 moderate, 2 significant",
                &["model", "version", "feature"],
            ),
            windows: flotilla_core::metrics::counter("flotilla_drift_windows_total", "Monitoring windows closed", labels),
            rows: flotilla_core::metrics::counter("flotilla_drift_rows_total", "Rows folded into monitoring windows", labels),
            skipped: flotilla_core::metrics::counter(
                "flotilla_drift_skipped_requests_total",
                "Requests not monitored, by reason (sampled: left out to keep within --drift-cpu-budget; overload: the aggregator's queue was full; shape: tensors unlike the profile's)",
                &["model", "reason"],
            ),
            webhook_failures: flotilla_core::metrics::counter(
                "flotilla_drift_webhook_failures_total",
                "Alert webhooks given up after retries",
                &["model"],
            ),
        };
        for c in [
            Box::new(m.score.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.alert.clone()),
            Box::new(m.windows.clone()),
            Box::new(m.rows.clone()),
            Box::new(m.skipped.clone()),
            Box::new(m.webhook_failures.clone()),
        ] {
            let _ = registry.register(c);
        }
        m
    }
}

/// The monitor: an [`Observer`] for the service plus its background aggregator.
pub struct Monitor {
    repository: PathBuf,
    /// Where each model's windows are snapshotted (`<dir>/<model>.json`), so they survive a restart.
    state_dir: Option<PathBuf>,
    models: RwLock<HashMap<String, Option<Arc<ModelState>>>>,
    /// Models whose profile was refused (unreadable, or not fitting the model's tensors), with
    /// the reason `/drift` and the repository index give.
    refused: RwLock<HashMap<String, String>>,
    tx: mpsc::Sender<Observation>,
    rx: Mutex<Option<mpsc::Receiver<Observation>>>,
    metrics: Metrics,
    http: reqwest::Client,
    worker: Worker,
    /// The runtime `run` was called on: webhooks are sent from it.
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Sampling under the CPU budget: one request in `keep_one_in` is observed (1: all).
    keep_one_in: AtomicU32,
    seq: AtomicU64,
    /// Set on a fleet worker: the router posts the alerts.
    webhooks_elsewhere: std::sync::atomic::AtomicBool,
}

impl Monitor {
    /// A monitor for the models of `repository` that carry a `drift_profile.json`; windows are
    /// snapshotted into `state_dir` (when given) at every window close and at shutdown;
    /// `folding` says which thread does the work (a server wants [`Folding::IdleThread`]).
    pub fn new(
        repository: PathBuf,
        state_dir: Option<PathBuf>,
        registry: &prometheus::Registry,
        folding: Folding,
    ) -> Arc<Monitor> {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        Arc::new(Monitor {
            repository,
            state_dir,
            models: RwLock::new(HashMap::new()),
            refused: RwLock::new(HashMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
            metrics: Metrics::new(registry),
            http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default(),
            worker: Worker::start(folding),
            runtime: std::sync::OnceLock::new(),
            keep_one_in: AtomicU32::new(1),
            seq: AtomicU64::new(0),
            webhooks_elsewhere: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The model's monitoring state (None when it has no profile), read once per model load.
    pub fn model(&self, name: &str) -> Option<Arc<ModelState>> {
        if let Some(m) = self.models.read().get(name) {
            return m.clone();
        }
        let sampled_out = self.metrics.skipped.with_label_values(&[name, "sampled"]);
        let state = match load_model(&self.repository.join(name), name, sampled_out) {
            Ok(s) => s.map(|s| {
                self.restore(&s);
                Arc::new(s)
            }),
            Err(e) => {
                tracing::error!(model = name, error = %e, "drift profile refused; drift monitoring off for this model");
                self.refused.write().insert(name.to_string(), e);
                None
            }
        };
        self.models.write().insert(name.to_string(), state.clone());
        state
    }

    /// Checks, when `model` loads, that its profile fits the tensors of `config` (a model
    /// retrained with other inputs beside an old profile): a profile that does not is refused,
    /// with the reason in the log, `/drift` and the repository index, and the model is not
    /// monitored. `Err` carries the reason (also for a profile that cannot be read).
    pub fn check_fit(&self, model: &str, config: &flotilla_core::ModelConfig) -> Result<(), String> {
        let Some(state) = self.model(model) else {
            return self.refusal(model).map_or(Ok(()), Err);
        };
        let fit = fits(&state.profile.inputs, &config.input, "input", |i| (&i.name, &i.dims))
            .and_then(|()| fits(&state.profile.output_tensors, &config.output, "output", |o| (&o.name, &o.dims)));
        if let Err(e) = fit {
            let reason = format!("{}: {e}", self.repository.join(model).join(profile::FILE_NAME).display());
            tracing::error!(model, error = %reason, "drift profile refused; drift monitoring off for this model");
            self.models.write().insert(model.to_string(), None);
            self.refused.write().insert(model.to_string(), reason.clone());
            return Err(reason);
        }
        Ok(())
    }

    /// Why `model` has no drift document: its profile was refused (FAILED_PRECONDITION with the
    /// reason), or it has none (NOT_FOUND, with how to build one).
    pub fn why_none(&self, model: &str) -> flotilla_core::Error {
        match self.refusal(model) {
            Some(reason) => {
                flotilla_core::Error::precondition(format!("drift monitoring of model '{model}' is off: {reason}"))
            }
            None => flotilla_core::Error::not_found(format!(
                "model '{model}' has no drift profile: build one with `flotilla profile --model {model} --data <training data>`"
            )),
        }
    }

    /// Why `model`'s profile was refused, when it was.
    pub fn refusal(&self, model: &str) -> Option<String> {
        self.refused.read().get(model).cloned()
    }

    /// Whether the next request to `model` is observed: the model has a profile, and the CPU
    /// budget's sampling (one in `keep_one_in`) keeps it; a request left out is counted.
    pub fn admits(&self, model: &str) -> bool {
        let Some(m) = self.model(model) else { return false };
        let k = self.keep_one_in.load(Ordering::Relaxed);
        if k > 1 && !self.seq.fetch_add(1, Ordering::Relaxed).is_multiple_of(u64::from(k)) {
            m.sampled_out.inc();
            return false;
        }
        true
    }

    /// Queues one served request of `model`/`version` for the aggregator, without waiting:
    /// when the queue is full the request is skipped and counted.
    pub fn observe_tensors(&self, model: &str, version: &str, inputs: Vec<Tensor>, outputs: Vec<Tensor>) {
        let Some(state) = self.model(model) else { return };
        let o = Observation { model: state, version: version.to_string(), inputs, outputs };
        if self.tx.try_send(o).is_err() {
            self.metrics.skipped.with_label_values(&[model, "overload"]).inc();
        }
    }

    /// Runs the aggregator until `stop` turns true (call once). It drains the queue on a timer
    /// instead of waiting on it, so a served request never wakes it (a wake per request would
    /// put the aggregator in front of the next request on the same worker thread), and hands
    /// the folding and scoring to its worker (see [`Folding`]). With a `cpu_budget` (a share of
    /// one core) it samples requests so that its work stays within it (see [`keep_one_in`]).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, cpu_budget: Option<f64>) {
        let Some(mut rx) = self.rx.lock().take() else { return };
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let cpu_budget = cpu_budget.filter(|b| *b > 0.0);
        let (mut period, mut busy) = (std::time::Instant::now(), Duration::ZERO);
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            let mut batch = Vec::new();
            while let Ok(o) = rx.try_recv() {
                batch.push(o);
            }
            // the clock is read here, in the runtime (a paused clock in tests), for the worker
            let (me, now) = (self.clone(), Instant::now());
            let folded = self
                .worker
                .run(move || {
                    let started = std::time::Instant::now();
                    batch.iter().for_each(|o| me.fold(o, now));
                    me.flush_counts();
                    if !stopping {
                        me.close_due(now);
                    }
                    (batch, started.elapsed())
                })
                .await;
            busy += folded.as_ref().map_or(Duration::ZERO, |(_, took)| *took);
            if let Some(budget) = cpu_budget {
                let elapsed = period.elapsed();
                if elapsed >= BUDGET_PERIOD {
                    let share = busy.as_secs_f64() / elapsed.as_secs_f64();
                    let was = self.keep_one_in.load(Ordering::Relaxed);
                    let next = keep_one_in(was, share, budget);
                    if next != was {
                        tracing::info!(share, budget, keep_one_in = next, "drift monitoring sampling changed");
                        self.keep_one_in.store(next, Ordering::Relaxed);
                    }
                    (period, busy) = (std::time::Instant::now(), Duration::ZERO);
                }
            }
            // The requests' buffers are freed here, on a runtime thread: freed on the idle-priority
            // thread, they would take the allocator locks of the threads that allocated them, and
            // a request thread could wait on a lock held by a thread the scheduler has set aside.
            drop(folded);
            if stopping {
                // what was queued before shutdown counted above; keep the open windows
                self.snapshot_all();
                return;
            }
        }
    }

    /// Writes every monitored model's windows to the state folder.
    pub fn snapshot_all(&self) {
        let models: Vec<Arc<ModelState>> = self.models.read().values().flatten().cloned().collect();
        for m in models {
            let versions = m.versions.lock();
            self.snapshot(&m, &versions);
        }
    }

    /// `<state_dir>/<model>.json`, written to a temporary file and renamed (never half written).
    fn snapshot(&self, m: &ModelState, versions: &BTreeMap<String, VersionState>) {
        let Some(dir) = &self.state_dir else { return };
        let snapshot = Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            profile_created: m.profile.created.clone(),
            versions: versions.iter().map(|(v, s)| (v.clone(), s.saved())).collect(),
        };
        let path = dir.join(format!("{}.json", m.name));
        let tmp = dir.join(format!(".{}.json.tmp", m.name));
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, serde_json::to_vec(&snapshot).unwrap_or_default()))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(model = %m.name, path = %path.display(), error = %e, "cannot snapshot drift windows");
        }
    }

    /// Takes up the windows a previous run left for this model, if they were made against the same profile.
    fn restore(&self, m: &ModelState) {
        let Some(dir) = &self.state_dir else { return };
        let path = dir.join(format!("{}.json", m.name));
        let Ok(text) = std::fs::read_to_string(&path) else { return };
        let snapshot: Snapshot = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(model = %m.name, path = %path.display(), error = %e, "ignoring an unreadable drift snapshot");
                return;
            }
        };
        if snapshot.format != SNAPSHOT_FORMAT
            || snapshot.version != SNAPSHOT_VERSION
            || snapshot.profile_created != m.profile.created
        {
            tracing::info!(model = %m.name, "drift snapshot is of another profile or format; starting afresh");
            return;
        }
        let mut versions = m.versions.lock();
        for (version, saved) in snapshot.versions {
            for (feature, a) in &saved.alerts {
                self.metrics
                    .alert
                    .with_label_values(&[m.name.as_str(), version.as_str(), feature.as_str()])
                    .set(a.state.gauge());
            }
            versions.insert(version, VersionState::from_saved(saved));
        }
        tracing::info!(model = %m.name, versions = versions.len(), "drift windows restored");
    }

    fn fold(&self, o: &Observation, now: Instant) {
        let m = &o.model;
        let (ins, outs, batch) = match read_rows(&m.profile, &o.inputs, &o.outputs) {
            Ok(r) => r,
            Err(reason) => {
                self.metrics.skipped.with_label_values(&[m.name.as_str(), "shape"]).inc();
                tracing::debug!(model = %m.name, reason, "request not monitored");
                return;
            }
        };
        let mut versions = m.versions.lock();
        if !versions.contains_key(o.version.as_str()) {
            versions.insert(o.version.clone(), VersionState::new(&m.profile, now));
        }
        let Some(v) = versions.get_mut(o.version.as_str()) else { return };
        let (wf, wo) = (m.profile.features.len(), m.profile.outputs.len());
        let mut scratch = Vec::new();
        let mut closed = false;
        for r in 0..batch {
            let (features, outputs) = (&ins[r * wf..(r + 1) * wf], &outs[r * wo..(r + 1) * wo]);
            v.window.add_row(&m.profile, &m.pca_columns, features, outputs, &mut scratch);
            if v.window.rows >= m.config.window_rows {
                self.close(m, &o.version, v, now);
                closed = true;
            }
        }
        // counted into the metric once per drain (flush_counts), not per request
        v.unreported_rows += batch as u64;
        if closed {
            self.snapshot(m, &versions);
        }
    }

    /// Brings `flotilla_drift_rows_total` up to date (a label lookup per version, not per request).
    fn flush_counts(&self) {
        let models: Vec<Arc<ModelState>> = self.models.read().values().flatten().cloned().collect();
        for m in models {
            for (version, v) in m.versions.lock().iter_mut() {
                if v.unreported_rows > 0 {
                    self.metrics.rows.with_label_values(&[m.name.as_str(), version.as_str()]).inc_by(v.unreported_rows);
                    v.unreported_rows = 0;
                }
            }
        }
    }

    fn close_due(&self, now: Instant) {
        let models: Vec<Arc<ModelState>> = self.models.read().values().flatten().cloned().collect();
        for m in models {
            let Some(every) = m.config.window_time else { continue };
            let mut versions = m.versions.lock();
            let mut closed = false;
            for (version, v) in versions.iter_mut() {
                if now.saturating_duration_since(v.opened) >= every && v.window.rows > 0 {
                    self.close(&m, version, v, now);
                    closed = true;
                }
            }
            if closed {
                self.snapshot(&m, &versions);
            }
        }
    }

    /// Scores the window, moves alert states, and opens the next window.
    fn close(&self, m: &ModelState, version: &str, v: &mut VersionState, now: Instant) {
        let report = v.window.report(&m.profile, &m.config, now_ms());
        let labels = |feature: &str, metric: &str| {
            [m.name.clone(), version.to_string(), feature.to_string(), metric.to_string()]
        };
        for c in report.features.iter().chain(&report.outputs) {
            for (metric, value) in c.scores.named() {
                let l = labels(&c.name, metric);
                self.metrics.score.with_label_values(&[&l[0], &l[1], &l[2], &l[3]]).set(value);
            }
        }
        if let Some(mv) = &report.multivariate {
            let l = labels("multivariate", "pca_error_ratio");
            self.metrics.score.with_label_values(&[&l[0], &l[1], &l[2], &l[3]]).set(mv.pca_error_ratio);
        }
        for (feature, level, metrics) in window::column_levels(&report) {
            let a = v.alerts.entry(feature.clone()).or_default();
            if let Some(previous) = a.step(level, m.config.consecutive) {
                let event = AlertEvent {
                    model: m.name.clone(),
                    version: version.to_string(),
                    feature: feature.clone(),
                    previous,
                    state: a.state,
                    window: report.index,
                    closed: report.closed.clone(),
                    metrics,
                };
                tracing::warn!(model = %m.name, version, feature, state = a.state.as_str(), previous = previous.as_str(), "drift alert state changed");
                self.send_webhook(m, event);
            }
            self.metrics.alert.with_label_values(&[m.name.as_str(), version, feature.as_str()]).set(a.state.gauge());
        }
        self.metrics.windows.with_label_values(&[m.name.as_str(), version]).inc();
        v.history.push_back(report);
        while v.history.len() > m.config.history {
            v.history.pop_front();
        }
        let closed_ms = now_ms();
        let window = std::mem::replace(&mut v.window, Window::new(&m.profile, v.next_index, closed_ms));
        v.closed.push_back(ClosedWindow { closed_ms, window });
        while v.closed.len() > CLOSED_KEPT {
            v.closed.pop_front();
        }
        v.next_index += 1;
        v.opened = now;
    }

    /// A fleet worker leaves alert webhooks to the router, which posts once per change of the
    /// fleet's state instead of once per worker.
    pub fn leave_webhooks_to_fleet(&self) {
        self.webhooks_elsewhere.store(true, Ordering::Relaxed);
    }

    fn send_webhook(&self, m: &ModelState, event: AlertEvent) {
        let Some(url) = m.config.webhook.clone() else { return };
        if self.webhooks_elsewhere.load(Ordering::Relaxed) {
            tracing::debug!(model = %m.name, "drift webhook left to the fleet router");
            return;
        }
        let Some(runtime) = self.runtime.get().cloned().or_else(|| tokio::runtime::Handle::try_current().ok()) else {
            tracing::warn!(model = %m.name, "drift webhook not sent: no runtime");
            return;
        };
        let (http, failures) = (self.http.clone(), self.metrics.webhook_failures.with_label_values(&[m.name.as_str()]));
        runtime.spawn(async move {
            let mut backoff = Duration::from_millis(250);
            for attempt in 1..=5 {
                match http.post(&url).json(&event).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => tracing::warn!(url, attempt, status = %r.status(), "drift webhook refused"),
                    Err(e) => tracing::warn!(url, attempt, error = %e, "drift webhook failed"),
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            failures.inc();
        });
    }

    /// The open window of each version, whole (sketches, counts, moments: `Window`'s JSON), and
    /// the last closed windows, for a fleet view that merges the windows of several workers
    /// with [`Window::merge`]; with `with_profile`, the profile and `drift.toml` to score them.
    pub fn open_windows(&self, name: &str, with_profile: bool) -> Option<serde_json::Value> {
        let m = self.model(name)?;
        let versions = m.versions.lock();
        let windows: BTreeMap<&String, &Window> = versions.iter().map(|(v, s)| (v, &s.window)).collect();
        let closed: BTreeMap<&String, &VecDeque<ClosedWindow>> = versions.iter().map(|(v, s)| (v, &s.closed)).collect();
        let mut doc = serde_json::json!({
            "model": m.name,
            "profile_created": m.profile.created,
            "versions": windows,
            "closed": closed,
        });
        if with_profile {
            doc["profile"] = serde_json::to_value(&m.profile).unwrap_or_default();
            doc["config"] = m.config_source.clone().into();
        }
        Some(doc)
    }

    /// The `/v2/models/{m}/drift` document (None when the model has no profile).
    pub fn report(&self, name: &str) -> Option<serde_json::Value> {
        let m = self.model(name)?;
        let versions = m.versions.lock();
        let reference: Vec<serde_json::Value> =
            m.profile.features.iter().chain(&m.profile.outputs).map(reference_summary).collect();
        let per_version: Vec<serde_json::Value> = versions
            .iter()
            .map(|(version, v)| {
                serde_json::json!({
                    "version": version,
                    "current_window": {"index": v.window.index, "opened": window::rfc3339(v.window.opened_ms), "rows": v.window.rows},
                    "alerts": v.alerts.iter().map(|(f, a)| (f.clone(), a.state)).collect::<BTreeMap<_, _>>(),
                    "windows": v.history.iter().rev().collect::<Vec<_>>(),
                })
            })
            .collect();
        Some(serde_json::json!({
            "model": m.name,
            "reference": {
                "source": m.profile.source,
                "created": m.profile.created,
                "rows": m.profile.rows,
                "columns": reference,
            },
            "settings": {
                "window_rows": m.config.window_rows,
                "window_seconds": m.config.window_time.map(|d| d.as_secs_f64()),
                "consecutive": m.config.consecutive,
                "keep_one_in": self.keep_one_in.load(Ordering::Relaxed),
                "thresholds": m.config.thresholds.iter().map(|(k, t)| (k.clone(), serde_json::json!({"moderate": t.moderate, "significant": t.significant}))).collect::<BTreeMap<_, _>>(),
            },
            "versions": per_version,
        }))
    }
}

impl Observer for Monitor {
    fn wants(&self, mv: &ModelVersion) -> bool {
        self.admits(&mv.name)
    }

    fn observe(&self, mv: &ModelVersion, inputs: Vec<Tensor>, outputs: Vec<Tensor>) {
        self.observe_tensors(&mv.name, &mv.version_str, inputs, outputs);
    }

    fn model_changed(&self, model: &str) {
        self.models.write().remove(model);
        self.refused.write().remove(model);
    }
}

const SNAPSHOT_FORMAT: &str = "flotilla-drift-state";
const SNAPSHOT_VERSION: u32 = 1;

/// A model's windows on disk.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: String,
    version: u32,
    /// The profile the windows were scored against (a new profile starts afresh).
    profile_created: String,
    versions: BTreeMap<String, SavedVersion>,
}

#[derive(Serialize, Deserialize)]
struct SavedVersion {
    window: Window,
    history: VecDeque<WindowReport>,
    alerts: BTreeMap<String, AlertState>,
    next_index: u64,
}

impl VersionState {
    fn saved(&self) -> SavedVersion {
        SavedVersion {
            window: self.window.clone(),
            history: self.history.clone(),
            alerts: self.alerts.clone(),
            next_index: self.next_index,
        }
    }

    /// The open window goes on from where it was (its time limit restarts now).
    fn from_saved(s: SavedVersion) -> VersionState {
        VersionState {
            window: s.window,
            opened: Instant::now(),
            history: s.history,
            closed: VecDeque::new(),
            alerts: s.alerts,
            next_index: s.next_index,
            unreported_rows: 0,
        }
    }

    fn new(profile: &Profile, now: Instant) -> VersionState {
        VersionState {
            window: Window::new(profile, 0, now_ms()),
            opened: now,
            history: VecDeque::new(),
            closed: VecDeque::new(),
            alerts: BTreeMap::new(),
            next_index: 1,
            unreported_rows: 0,
        }
    }
}

/// Reads `<model folder>/drift_profile.json` and the optional `drift.toml`.
fn load_model(
    folder: &std::path::Path,
    name: &str,
    sampled_out: prometheus::IntCounter,
) -> Result<Option<ModelState>, String> {
    let path = folder.join(profile::FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let profile = Profile::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let config_source = std::fs::read_to_string(folder.join(config::FILE_NAME)).unwrap_or_default();
    let config = match config_source.is_empty() {
        false => DriftConfig::parse(&config_source).map_err(|e| format!("{}: {e}", folder.display()))?,
        true => DriftConfig::default(),
    };
    let pca_columns = profile
        .multivariate
        .as_ref()
        .map(|m| m.features.iter().map(|f| profile.features.iter().position(|c| &c.name == f)).collect())
        .unwrap_or_default();
    tracing::info!(
        model = name,
        features = profile.features.len(),
        outputs = profile.outputs.len(),
        window_rows = config.window_rows,
        "drift monitoring on"
    );
    Ok(Some(ModelState {
        name: name.to_string(),
        profile,
        config,
        config_source,
        pca_columns,
        versions: Mutex::new(BTreeMap::new()),
        sampled_out,
    }))
}

/// Whether the profile's tensor columns fit the model's declared tensors: each tensor exists,
/// and where its shape is fully declared it holds as many values per row as the profile has
/// columns (a shape with a variable dimension is taken on trust).
fn fits<T>(
    specs: &[profile::TensorColumns],
    declared: &[T],
    what: &str,
    name_dims: impl Fn(&T) -> (&String, &Vec<i64>),
) -> Result<(), String> {
    for spec in specs {
        let Some(dims) = declared.iter().map(&name_dims).find(|(n, _)| **n == spec.tensor).map(|(_, d)| d) else {
            let names: Vec<&str> = declared.iter().map(|t| name_dims(t).0.as_str()).collect();
            return Err(format!(
                "the profile reads {what} tensor '{}', which the model does not have (its {what}s: {}); rebuild it with `flotilla profile`",
                spec.tensor,
                names.join(", ")
            ));
        };
        let width: i64 = dims.iter().product();
        if dims.iter().all(|d| *d >= 0) && width != spec.columns.len() as i64 {
            return Err(format!(
                "the profile has {} columns for {what} '{}', but the model's '{}' holds {width} values per row (dims {dims:?}); rebuild it with `flotilla profile`",
                spec.columns.len(),
                spec.tensor,
                spec.tensor
            ));
        }
    }
    Ok(())
}

/// A reference column summarised for `/drift` documents.
pub fn reference_summary(c: &profile::Column) -> serde_json::Value {
    match &c.kind {
        profile::ColumnKind::Numeric(r) => {
            let s = &r.summary;
            serde_json::json!({
                "name": c.name, "kind": "numeric", "count": s.moments.count, "missing_rate": s.missing_rate(),
                "mean": s.moments.mean, "std": s.moments.std(), "min": s.min, "max": s.max,
                "bin_edges": r.bin_edges, "bins": s.bins,
            })
        }
        profile::ColumnKind::Categorical(s) => {
            let top = s.top(window::SHOWN_CATEGORIES);
            let shown: u64 = top.iter().map(|(_, n)| n).sum();
            serde_json::json!({
                "name": c.name, "kind": "categorical", "missing_rate": s.missing_rate(),
                "categories": s.counts.len(), "top": top.first().map(|(k, _)| k),
                "counts": top.iter().copied().collect::<BTreeMap<_, _>>(),
                "other_categories": s.total() - s.missing - shown,
            })
        }
    }
}

/// A request's feature and output values, row-major in the profile's column order, and its row count.
type Rows<'a> = (Vec<Cell<'a>>, Vec<Cell<'a>>, usize);

fn read_rows<'a>(p: &Profile, inputs: &'a [Tensor], outputs: &'a [Tensor]) -> Result<Rows<'a>, String> {
    let (ins, in_rows) = tensor_rows(&p.inputs, inputs)?;
    let (outs, out_rows) = tensor_rows(&p.output_tensors, outputs)?;
    if in_rows.zip(out_rows).is_some_and(|(a, b)| a != b) {
        return Err("tensors disagree on the batch size".into());
    }
    Ok((ins, outs, in_rows.or(out_rows).unwrap_or(0)))
}

/// The profiled columns of the named tensors, row-major (one tensor: its own order, no copy
/// beyond decoding; several: each row's columns tensor after tensor), and their row count.
fn tensor_rows<'a>(
    specs: &[profile::TensorColumns],
    tensors: &'a [Tensor],
) -> Result<(Vec<Cell<'a>>, Option<usize>), String> {
    let mut parts = Vec::with_capacity(specs.len());
    let mut rows: Option<usize> = None;
    for spec in specs {
        let t = tensors.iter().find(|t| t.name == spec.tensor).ok_or_else(|| format!("no tensor '{}'", spec.tensor))?;
        let width = spec.columns.len();
        let n = match t.shape.as_slice() {
            [n, w] if *w as usize == width => *n as usize,
            [n] if width == 1 => *n as usize,
            [w] if *w as usize == width => 1,
            s => return Err(format!("tensor '{}' has shape {s:?}, the profile has {width} columns", t.name)),
        };
        if rows.is_some_and(|r| r != n) {
            return Err("tensors disagree on the batch size".into());
        }
        rows = Some(n);
        parts.push((cells(t, n * width)?, width));
    }
    if parts.len() <= 1 {
        return Ok((parts.pop().map(|(c, _)| c).unwrap_or_default(), rows));
    }
    let n = rows.unwrap_or(0);
    let mut out = Vec::with_capacity(n * parts.iter().map(|(_, w)| w).sum::<usize>());
    for r in 0..n {
        for (c, w) in &parts {
            out.extend_from_slice(&c[r * w..(r + 1) * w]);
        }
    }
    Ok((out, rows))
}

fn cells(t: &Tensor, n: usize) -> Result<Vec<Cell<'_>>, String> {
    let cells: Vec<Cell<'_>> = if t.datatype == DataType::Bytes {
        let items = flotilla_core::tensor::split_bytes_elements(&t.data, &t.name).map_err(|e| e.message)?;
        // an empty element is a missing value (BYTES has no null)
        items.into_iter().map(|b| Cell::Text(std::str::from_utf8(b).ok().filter(|s| !s.is_empty()))).collect()
    } else {
        let values = flotilla_core::tensor::to_f64(t.datatype, &t.data).map_err(|e| e.message)?;
        values.into_iter().map(Cell::Number).collect()
    };
    if cells.len() != n || (t.datatype != DataType::Bytes && t.data.len() != n * t.datatype.size().unwrap_or(0)) {
        return Err(format!("tensor '{}': {} bytes do not hold the {n} elements of its shape", t.name, t.data.len()));
    }
    Ok(cells)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
