//! The fleet's drift view (`GET /v2/models/{m}/drift` on the router).
//!
//! Each worker scores its own windows; the router collects the windows the workers *closed*
//! (`/v2/models/{m}/drift/window` hands them over whole, with the profile and `drift.toml` on
//! request), merges them into fleet windows with [`Window::merge`] and scores those against the
//! same profile and thresholds. Every row is counted once: in the window its worker closed, and
//! that window in one fleet window. A fleet window closes once every worker monitoring the model
//! has handed over at least one window since the last (or when the model's window time has
//! passed since the first did), so a fleet of two workers scores both workers' rows together.
//! Alert states move with the same hysteresis (`consecutive`) as on a worker, once for the
//! fleet: an event, the `flotilla_fleet_drift_alert` gauge and one webhook per change (the
//! leading router posts it; workers that joined a fleet leave their webhooks to it).

use crate::member::Member;
use crate::router::Fleet;
use flotilla_drift::monitor::config::DriftConfig;
use flotilla_drift::monitor::window::{self, Window, WindowReport};
use flotilla_drift::monitor::{reference_summary, AlertEvent, AlertState, ClosedWindow};
use flotilla_drift::profile::Profile;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the router collects closed windows from its workers.
pub const COLLECT_EVERY: Duration = Duration::from_secs(2);
/// When a model's `drift.toml` sets no window time, a fleet window waits at most this long for
/// the slowest worker.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The router's drift views, one per monitored model.
#[derive(Default)]
pub struct FleetDrift {
    models: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<ModelView>>>>>,
}

/// What a worker's `/drift/window` answers.
#[derive(Deserialize)]
struct WorkerWindows {
    profile_created: String,
    #[serde(default)]
    versions: BTreeMap<String, Window>,
    #[serde(default)]
    closed: BTreeMap<String, Vec<ClosedWindow>>,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    config: Option<String>,
}

struct ModelView {
    profile: Profile,
    config: DriftConfig,
    versions: BTreeMap<String, VersionView>,
    /// The workers that answered the last collection.
    workers: BTreeSet<String>,
}

#[derive(Default)]
struct VersionView {
    /// Per worker: one past the index of the newest closed window taken.
    taken: HashMap<String, u64>,
    /// Windows taken since the last fleet window closed, merged, and who gave them.
    pending: Option<(Window, BTreeSet<String>, Instant)>,
    /// The workers' open windows at the last collection, merged, and how many there were.
    open: Option<Window>,
    open_workers: usize,
    history: VecDeque<FleetWindow>,
    alerts: BTreeMap<String, AlertState>,
    next_index: u64,
}

#[derive(Clone, serde::Serialize)]
struct FleetWindow {
    #[serde(flatten)]
    report: WindowReport,
    /// The workers whose closed windows this fleet window merges.
    workers: Vec<String>,
}

impl FleetDrift {
    fn view(&self, model: &str) -> Arc<tokio::sync::Mutex<Option<ModelView>>> {
        self.models.lock().entry(model.to_string()).or_default().clone()
    }

    /// The models any worker in the view monitors.
    fn monitored(fleet: &Fleet) -> BTreeSet<String> {
        fleet
            .members
            .all()
            .iter()
            .map(|m| m.record())
            .filter(|r| r.drift)
            .flat_map(|r| r.models.iter().map(|o| o.name.clone()).collect::<Vec<_>>())
            .collect()
    }

    /// Collects the closed windows of every worker that monitors `model`, merges them into the
    /// pending fleet window and closes it when it is due. `Ok(false)`: no worker monitors the
    /// model or none has a profile for it.
    pub async fn collect(&self, fleet: &Fleet, model: &str) -> Result<bool, String> {
        let workers: Vec<Arc<Member>> = fleet
            .members
            .all()
            .into_iter()
            .filter(|m| !m.draining() && m.record().drift && m.record().offer(model, "").is_some())
            .collect();
        if workers.is_empty() {
            return Ok(false);
        }
        let view = self.view(model);
        let mut view = view.lock().await;
        let known = view.as_ref().map(|v| v.profile.created.clone());
        let answers = futures::future::join_all(workers.iter().map(|w| fetch(fleet, w, model, known.as_deref()))).await;
        let mut docs = Vec::new();
        for (w, answer) in workers.iter().zip(answers) {
            match answer {
                Ok(Some(doc)) => docs.push((w.record().id.clone(), doc)),
                Ok(None) => {}
                Err(e) => tracing::debug!(worker = %w.record().id, model, error = %e, "drift windows not collected"),
            }
        }
        // A new profile (or the first answer) starts the view afresh, scored as the workers do.
        if let Some((_, doc)) =
            docs.iter().find(|(_, d)| d.profile.is_some() && known.as_deref() != Some(&d.profile_created))
        {
            let profile = doc.profile.clone().ok_or("no profile")?;
            let config = match doc.config.as_deref().unwrap_or("") {
                "" => DriftConfig::default(),
                text => DriftConfig::parse(text)?,
            };
            *view = Some(ModelView { profile, config, versions: BTreeMap::new(), workers: BTreeSet::new() });
        }
        let Some(v) = view.as_mut() else { return Ok(false) };
        let created = v.profile.created.clone();
        docs.retain(|(_, d)| d.profile_created == created);
        v.workers = docs.iter().map(|(id, _)| id.clone()).collect();
        let wait = v.config.window_time.unwrap_or(DEFAULT_WAIT);
        let now = Instant::now();
        for version in v.versions.values_mut() {
            version.open = None;
            version.open_workers = 0;
        }
        for (id, doc) in &docs {
            for (version, open) in &doc.versions {
                let vv = v
                    .versions
                    .entry(version.clone())
                    .or_insert_with(|| VersionView { next_index: 1, ..Default::default() });
                match &mut vv.open {
                    Some(merged) => merged.merge(open)?,
                    None => vv.open = Some(open.clone()),
                }
                vv.open_workers += 1;
            }
            for (version, closed) in &doc.closed {
                let vv = v
                    .versions
                    .entry(version.clone())
                    .or_insert_with(|| VersionView { next_index: 1, ..Default::default() });
                vv.take(id, closed, now)?;
            }
        }
        let mut events = Vec::new();
        let ModelView { profile, config, versions, workers } = v;
        for (version, vv) in versions.iter_mut() {
            let due = vv.pending.as_ref().is_some_and(|(_, from, since)| {
                workers.iter().all(|w| from.contains(w)) || now.duration_since(*since) >= wait
            });
            if due {
                events.extend(vv.close(fleet, profile, config, model, version));
            }
        }
        let webhook = config.webhook.clone();
        drop(view);
        for event in events {
            announce(fleet, webhook.clone(), event);
        }
        Ok(true)
    }

    /// `GET /v2/models/{m}/drift` on the router (after a collection): the fleet's windows and
    /// alert states per version, and the workers' open windows. None: no view yet.
    pub async fn report(&self, model: &str) -> Option<serde_json::Value> {
        let view = self.view(model);
        let view = view.lock().await;
        let v = view.as_ref()?;
        let reference: Vec<serde_json::Value> =
            v.profile.features.iter().chain(&v.profile.outputs).map(reference_summary).collect();
        let versions: Vec<serde_json::Value> = v
            .versions
            .iter()
            .map(|(version, vv)| {
                let pending =
                    vv.pending.as_ref().map(|(w, from, _)| serde_json::json!({"rows": w.rows, "workers": from}));
                serde_json::json!({
                    "version": version,
                    "current_window": {"rows": vv.open.as_ref().map_or(0, |w| w.rows), "workers": vv.open_workers},
                    "pending": pending,
                    "alerts": vv.alerts.iter().map(|(f, a)| (f.clone(), a.state)).collect::<BTreeMap<_, _>>(),
                    "windows": vv.history.iter().rev().collect::<Vec<_>>(),
                })
            })
            .collect();
        Some(serde_json::json!({
            "model": model,
            "scope": "fleet",
            "workers": v.workers,
            "reference": {
                "source": v.profile.source,
                "created": v.profile.created,
                "rows": v.profile.rows,
                "columns": reference,
            },
            "settings": {
                "window_rows": v.config.window_rows,
                "window_seconds": v.config.window_time.map(|d| d.as_secs_f64()),
                "consecutive": v.config.consecutive,
                "thresholds": v.config.thresholds.iter().map(|(k, t)| (k.clone(), serde_json::json!({"moderate": t.moderate, "significant": t.significant}))).collect::<BTreeMap<_, _>>(),
            },
            "versions": versions,
        }))
    }

    /// `GET /v2/models/{m}/drift/window` on the router: the workers' open windows merged per
    /// version (as of the last collection), in the workers' format.
    pub async fn open_windows(&self, model: &str) -> Option<serde_json::Value> {
        let view = self.view(model);
        let view = view.lock().await;
        let v = view.as_ref()?;
        let open: BTreeMap<&String, &Window> =
            v.versions.iter().filter_map(|(version, vv)| vv.open.as_ref().map(|w| (version, w))).collect();
        Some(serde_json::json!({
            "model": model,
            "profile_created": v.profile.created,
            "scope": "fleet",
            "workers": v.workers,
            "versions": open,
        }))
    }

    /// Collects every monitored model every [`COLLECT_EVERY`], so fleet windows close and
    /// alerts move without anyone asking.
    pub fn spawn(fleet: Arc<Fleet>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COLLECT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for model in Self::monitored(&fleet) {
                    if let Err(e) = fleet.drift.collect(&fleet, &model).await {
                        tracing::warn!(model, error = %e, "fleet drift view not updated");
                    }
                }
            }
        })
    }
}

impl VersionView {
    /// Takes the windows `worker` closed since the last collection.
    fn take(&mut self, worker: &str, closed: &[ClosedWindow], now: Instant) -> Result<(), String> {
        let Some(newest) = closed.iter().map(|c| c.window.index).max() else { return Ok(()) };
        // A worker that restarted without its state numbers its windows afresh: take them all.
        let next = self.taken.get(worker).copied().filter(|n| *n <= newest + 1).unwrap_or(0);
        for c in closed.iter().filter(|c| c.window.index >= next) {
            match &mut self.pending {
                Some((merged, from, _)) => {
                    merged.merge(&c.window)?;
                    from.insert(worker.to_string());
                }
                None => self.pending = Some((c.window.clone(), BTreeSet::from([worker.to_string()]), now)),
            }
        }
        self.taken.insert(worker.to_string(), newest + 1);
        Ok(())
    }

    /// Scores the pending fleet window, moves the fleet's alert states and keeps the report.
    fn close(
        &mut self,
        fleet: &Fleet,
        profile: &Profile,
        config: &DriftConfig,
        model: &str,
        version: &str,
    ) -> Vec<AlertEvent> {
        let Some((mut merged, from, _)) = self.pending.take() else { return Vec::new() };
        merged.index = self.next_index;
        self.next_index += 1;
        let report = merged.report(profile, config, now_ms());
        let mut events = Vec::new();
        for (feature, level, metrics) in window::column_levels(&report) {
            let a = self.alerts.entry(feature.clone()).or_default();
            if let Some(previous) = a.step(level, config.consecutive) {
                events.push(AlertEvent {
                    model: model.to_string(),
                    version: version.to_string(),
                    feature: feature.clone(),
                    previous,
                    state: a.state,
                    window: report.index,
                    closed: report.closed.clone(),
                    metrics,
                });
            }
            fleet.metrics.drift_alert.with_label_values(&[model, version, feature.as_str()]).set(a.state.gauge());
        }
        fleet.metrics.drift_windows.with_label_values(&[model, version]).inc();
        self.history.push_back(FleetWindow { report, workers: from.into_iter().collect() });
        while self.history.len() > config.history {
            self.history.pop_front();
        }
        events
    }
}

/// One worker's windows; the profile too when the view has none or another.
async fn fetch(fleet: &Fleet, w: &Member, model: &str, known: Option<&str>) -> Result<Option<WorkerWindows>, String> {
    let base = format!("{}/v2/models/{model}/drift/window", w.record().http);
    let get = |url: String| async move {
        let answer = fleet.http.get(url).timeout(Duration::from_secs(5)).send().await.map_err(|e| e.to_string())?;
        match answer.status() {
            s if s.is_success() => answer.json::<WorkerWindows>().await.map(Some).map_err(|e| e.to_string()),
            // a worker without the model's profile (or not monitoring it)
            s if s.as_u16() == 404 || s.as_u16() == 400 => Ok(None),
            s => Err(format!("{s}")),
        }
    };
    let doc = get(base.clone()).await?;
    match doc {
        Some(d) if known != Some(d.profile_created.as_str()) => get(format!("{base}?profile=true")).await,
        other => Ok(other),
    }
}

/// Logs the fleet's alert change as an event and posts the model's webhook (the leading router only).
fn announce(fleet: &Fleet, webhook: Option<String>, event: AlertEvent) {
    tracing::warn!(model = %event.model, version = %event.version, feature = %event.feature, state = event.state.as_str(), previous = event.previous.as_str(), "fleet drift alert state changed");
    fleet.events().push(
        "fleet",
        "drift_alert",
        format!(
            "{} v{} {}: {} -> {} (fleet window {})",
            event.model,
            event.version,
            event.feature,
            event.previous.as_str(),
            event.state.as_str(),
            event.window
        ),
    );
    let Some(url) = webhook.filter(|_| fleet.leads()) else { return };
    let http = fleet.http.clone();
    let failures = fleet.metrics.drift_webhook_failures.with_label_values(&[event.model.as_str()]);
    tokio::spawn(async move {
        let mut body = serde_json::to_value(&event).unwrap_or_default();
        body["scope"] = "fleet".into();
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=3 {
            match http.post(&url).json(&body).timeout(Duration::from_secs(5)).send().await {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => tracing::warn!(url, attempt, status = %r.status(), "fleet drift webhook refused"),
                Err(e) => tracing::warn!(url, attempt, error = %e, "fleet drift webhook failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        failures.inc();
    });
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_drift::profile::Data;

    fn closed(profile: &Profile, index: u64, rows: u64) -> ClosedWindow {
        let mut window = Window::new(profile, index, 0);
        window.rows = rows;
        ClosedWindow { closed_ms: 0, window }
    }

    #[test]
    fn each_closed_window_is_taken_once_and_a_restart_starts_afresh() {
        let data = [("x".to_string(), Data::Numeric((0..100).map(f64::from).collect()))];
        let profile = Profile::build("m", "test", "now", (Vec::new(), &data), (Vec::new(), &[]));
        let mut v = VersionView { next_index: 1, ..Default::default() };
        let now = Instant::now();
        v.take("a", &[], now).unwrap();
        assert!(v.pending.is_none());
        v.take("a", &[closed(&profile, 0, 10)], now).unwrap();
        v.take("b", &[closed(&profile, 0, 5), closed(&profile, 1, 7)], now).unwrap();
        // the same windows again, and one new one from a
        v.take("a", &[closed(&profile, 0, 10), closed(&profile, 1, 3)], now).unwrap();
        v.take("b", &[closed(&profile, 0, 5), closed(&profile, 1, 7)], now).unwrap();
        let (w, from, _) = v.pending.as_ref().unwrap();
        assert_eq!(w.rows, 10 + 5 + 7 + 3);
        assert_eq!(from.iter().collect::<Vec<_>>(), ["a", "b"]);
        // b restarted without its state: its windows are numbered from 0 again
        v.pending = None;
        v.take("b", &[closed(&profile, 0, 4)], now).unwrap();
        assert_eq!(v.pending.as_ref().unwrap().0.rows, 4);
    }
}
