//! The router's control loop over the desired state: it watches `fleet.toml` (a bad edit is
//! refused with file, line and reason, and the last good state stays), keeps one
//! [`ModelTraffic`] per declared model, advances canaries and rollouts on a tick with what the
//! workers have ready, tells operators (event log, metrics, webhook), and asks workers to load
//! the versions the policies need — before any traffic moves to them — and, when the model says
//! `unload_previous`, to drop a version once nothing is in flight on it.
//!
//! Versions move through Triton's repository API: the router reads a worker's model config,
//! sets its `version_policy` to the versions needed, and sends it back as a load's `config`
//! parameter. That needs workers in explicit model control mode; a worker in another mode
//! serves what its repository's version policy gives it, and the event log says so.

use crate::desired::{self, DesiredError, DesiredState};
use crate::member::Member;
use crate::router::Fleet;
use crate::traffic::{ModelTraffic, Transition};
use flotilla_proto::inference as pb;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the loop looks at the file and ticks the policies.
pub const TICK: Duration = Duration::from_millis(250);
/// After a failed version load on a worker, the next try waits this long.
const SYNC_BACKOFF: Duration = Duration::from_secs(10);

/// The KV key of the desired state when several routers share a NATS registry.
pub const DESIRED_KEY: &str = "desired.state";

/// The desired state as the NATS registry keeps it: the text of the newest valid edit, where
/// it came from, and when it was made (the file's modification time, Unix ms).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SharedDesired {
    pub text: String,
    pub file: String,
    pub router: String,
    pub edited_ms: u64,
}

/// How often the lease holder puts the registry's copy again.
const SHARED_REFRESH: Duration = Duration::from_secs(60);

/// A router's view of the shared desired state.
struct SharedWatch {
    /// The file as last read, and its text when valid.
    read: Option<Result<String, String>>,
    valid: Option<SharedDesired>,
    /// The copy in force.
    applied: Option<SharedDesired>,
    refreshed: Instant,
}

impl Default for SharedWatch {
    fn default() -> Self {
        Self { read: None, valid: None, applied: None, refreshed: Instant::now() }
    }
}

/// What `GET /v2/fleet` shows of the desired state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DesiredStatus {
    /// The watched file, if any.
    pub file: Option<String>,
    /// Where the state in force comes from: `file`, or `nats` (the registry's copy, which every
    /// router applies; a router publishes its file there when the file holds the newest edit).
    pub source: Option<String>,
    /// With NATS: the router and file the state in force was published from.
    pub published_by: Option<String>,
    /// Models declared in the state in force.
    pub models: usize,
    /// Unix ms when the state in force was applied.
    pub applied_at_ms: Option<f64>,
    /// Why the file on disk is refused (the last good state stays in force).
    pub error: Option<String>,
}

/// The desired state in force and its live traffic policies.
#[derive(Default)]
pub struct Control {
    traffic: RwLock<HashMap<String, Arc<ModelTraffic>>>,
    status: RwLock<DesiredStatus>,
    headers: RwLock<Vec<String>>,
    /// (worker, model) → when a version load may be tried again (in progress: far future).
    syncing: Mutex<HashMap<(String, String), Instant>>,
    /// Models served from artifacts: where they run, and each worker's assignment.
    pub placement: crate::placement::Placement,
    /// Placement specs of the state in force.
    placements: RwLock<std::collections::BTreeMap<String, crate::desired::PlacementSpec>>,
}

impl Control {
    /// The live policy of `model`, if the desired state declares it.
    pub fn traffic(&self, model: &str) -> Option<Arc<ModelTraffic>> {
        self.traffic.read().get(model).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ModelTraffic>> {
        let mut v: Vec<_> = self.traffic.read().values().cloned().collect();
        v.sort_by(|a, b| a.model.cmp(&b.model));
        v
    }

    pub fn status(&self) -> DesiredStatus {
        self.status.read().clone()
    }

    /// Whether the A/B splits key on request header `name` (lower case).
    pub fn forwards_header(&self, name: &str) -> bool {
        self.headers.read().iter().any(|h| h == name)
    }

    /// Puts `state` in force: declared models keep their live state where their policy did not
    /// change; models no longer declared lose their policy.
    pub fn apply(&self, state: DesiredState) {
        let mut traffic = self.traffic.write();
        traffic.retain(|name, _| state.models.contains_key(name));
        for (name, spec) in &state.models {
            match traffic.get(name) {
                Some(t) => t.update(spec.clone()),
                None => {
                    traffic.insert(name.clone(), Arc::new(ModelTraffic::new(name, spec.clone())));
                }
            }
        }
        *self.headers.write() = state.headers();
        let placements: std::collections::BTreeMap<_, _> =
            state.models.iter().filter_map(|(n, m)| m.placement.clone().map(|p| (n.clone(), p))).collect();
        self.placement.rescan(&placements);
        *self.placements.write() = placements;
        let mut status = self.status.write();
        status.models = state.models.len();
        status.applied_at_ms = Some(crate::events::now_ms());
        status.error = None;
    }

    fn refuse(&self, error: &DesiredError) {
        self.status.write().error = Some(error.to_string());
    }
}

// === impl Fleet (control loop) ===

impl Fleet {
    /// Watches `path` (when given) and ticks the traffic policies until the router stops. With
    /// a NATS `registry`, the state in force is the registry's copy (see [`SharedDesired`]).
    pub fn spawn_control(
        self: &Arc<Self>,
        path: Option<PathBuf>,
        registry: Option<Arc<crate::nats::Kv>>,
    ) -> tokio::task::JoinHandle<()> {
        let fleet = Arc::downgrade(self);
        {
            let mut status = self.control.status.write();
            status.file = path.as_ref().map(|p| p.display().to_string());
            status.source = Some(if registry.is_some() { "nats" } else { "file" }.into());
        }
        tokio::spawn(async move {
            let mut last: Option<Result<String, String>> = None;
            let mut shared = SharedWatch::default();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(fleet) = fleet.upgrade() else { return };
                match (&path, &registry) {
                    (p, Some(kv)) => fleet.reload_shared(p.as_deref(), kv, &mut shared).await,
                    (Some(p), None) => fleet.reload(p, &mut last),
                    (None, None) => {}
                }
                fleet.tick_policies();
                // One router at a time places models and loads versions (the control lease).
                if fleet.leads() {
                    fleet.place();
                    fleet.sync_versions();
                }
            }
        })
    }

    /// With a NATS registry: publishes the file when it is valid and the newest edit (newer
    /// than the registry's copy, or the registry has none), then applies the registry's copy
    /// when it changed. The lease holder puts the copy again now and then (the bucket forgets
    /// entries nobody refreshed for five minutes). While NATS is unreachable the state in force
    /// stays.
    async fn reload_shared(&self, path: Option<&std::path::Path>, kv: &crate::nats::Kv, w: &mut SharedWatch) {
        let current = match kv.get_json::<SharedDesired>(DESIRED_KEY).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "desired state not read from the registry");
                return;
            }
        };
        if let Some(p) = path {
            let file = p.display().to_string();
            let read = std::fs::read_to_string(p).map_err(|e| e.to_string());
            if (read.is_ok() || p.exists()) && w.read.as_ref() != Some(&read) {
                w.read = Some(read.clone());
                w.valid = None;
                let edited_ms = std::fs::metadata(p)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let parsed = match &read {
                    Ok(text) => desired::parse(&file, text).map(|_| text.clone()),
                    Err(why) => {
                        Err(DesiredError { file: file.clone(), line: 0, reason: format!("cannot read it: {why}") })
                    }
                };
                match parsed {
                    Ok(text) => {
                        w.valid =
                            Some(SharedDesired { text, file: file.clone(), router: self.router_id.clone(), edited_ms })
                    }
                    Err(e) => self.refused(&e, &file),
                }
            }
        }
        let publish = w
            .valid
            .as_ref()
            .filter(|mine| current.as_ref().is_none_or(|c| c.text != mine.text && mine.edited_ms > c.edited_ms));
        let refresh = current.as_ref().filter(|_| self.leads() && w.refreshed.elapsed() >= SHARED_REFRESH);
        if let Some(value) = publish.or(refresh) {
            match kv.put_json(DESIRED_KEY, value).await {
                Ok(()) if publish.is_some() => self.members.events.push(
                    "router",
                    "desired_state_published",
                    format!("{}: published to the registry", value.file),
                ),
                Ok(()) => {}
                Err(e) => tracing::warn!(error = %e, "desired state not written to the registry"),
            }
            w.refreshed = Instant::now();
        }
        let current = match publish {
            Some(p) => Some(p.clone()),
            None => current,
        };
        let Some(c) = current.filter(|c| w.applied.as_ref() != Some(c)) else { return };
        let name = format!("nats:{DESIRED_KEY} (from {} on {})", c.file, c.router);
        // Relative artifact paths resolve against the publishing router's folder: routers that
        // share a registry see the artifacts at the same paths.
        match desired::parse(&c.file, &c.text) {
            Ok(state) => {
                let n = state.models.len();
                self.control.apply(state);
                self.control.status.write().published_by = Some(format!("{} ({})", c.router, c.file));
                self.metrics.desired_reloads.with_label_values(&["applied"]).inc();
                self.metrics.desired_valid.with_label_values(&["nats"]).set(1);
                self.members.events.push("router", "desired_state", format!("{name}: applied ({n} models)"));
            }
            Err(e) => self.refused(&e, "nats"),
        }
        w.applied = Some(c);
    }

    fn refused(&self, e: &DesiredError, file: &str) {
        self.control.refuse(e);
        self.metrics.desired_reloads.with_label_values(&["refused"]).inc();
        self.metrics.desired_valid.with_label_values(&[file]).set(0);
        tracing::error!(error = %e, "desired state refused; keeping the last good state");
        self.members.events.push("router", "desired_state_refused", format!("{e}; keeping the last good state"));
    }

    /// Reads the file; applies it when it changed and is valid, else keeps the last good state.
    fn reload(&self, path: &PathBuf, last: &mut Option<Result<String, String>>) {
        let file = path.display().to_string();
        let read = match std::fs::read_to_string(path) {
            // No file: nothing declared (a router without a desired state routes by version only).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && last.is_none() => return,
            r => r.map_err(|e| e.to_string()),
        };
        if last.as_ref() == Some(&read) {
            return;
        }
        let parsed = match &read {
            Ok(text) => desired::parse(&file, text),
            Err(why) => Err(DesiredError { file: file.clone(), line: 0, reason: format!("cannot read it: {why}") }),
        };
        *last = Some(read);
        match parsed {
            Ok(state) => {
                let n = state.models.len();
                self.control.apply(state);
                self.metrics.desired_reloads.with_label_values(&["applied"]).inc();
                self.metrics.desired_valid.with_label_values(&[&file]).set(1);
                self.members.events.push("router", "desired_state", format!("{file}: applied ({n} models)"));
            }
            Err(e) => self.refused(&e, &file),
        }
    }

    /// Members in rotation that list `model`.
    fn serving_model(&self, model: &str) -> Vec<Arc<Member>> {
        self.members.all().into_iter().filter(|m| m.available() && m.record().offer(model, "").is_some()).collect()
    }

    /// Rescans the artifacts and re-places the models served from them on the
    /// workers in rotation; logs each change with its reason.
    fn place(&self) {
        let specs = self.control.placements.read().clone();
        if specs.is_empty() && !self.control.placement.active() {
            return;
        }
        // Every tick: a file whose size and modification time did not change is not read again
        // (a hundred models is a few hundred stat calls).
        self.control.placement.rescan(&specs);
        let members = self.members.all();
        // Members that are not draining: a worker briefly out of rotation (a slow probe, a burst
        // of failures) keeps its models; one that died leaves the view at its TTL and a preempted
        // one is draining at once — then its replicas move.
        let candidates: Vec<crate::placement::Candidate> = members
            .iter()
            .filter(|m| !m.draining())
            .map(|m| {
                let r = m.record();
                crate::placement::Candidate { id: r.id.clone(), class: r.capacity_class, hardware: r.hardware.clone() }
            })
            .collect();
        let known: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let changes = self.control.placement.replace(&specs, &candidates, &known);
        for (worker, digest) in changes.workers {
            // Tell the worker now rather than in its next heartbeat's answer.
            let Some(m) = members.iter().find(|m| m.id == worker) else { continue };
            let url = format!("{}/v2/admin/sync", m.record().http);
            let http = self.http.clone();
            tokio::spawn(async move {
                let _ = http
                    .post(url)
                    .timeout(Duration::from_secs(2))
                    .json(&serde_json::json!({"digest": digest}))
                    .send()
                    .await;
            });
        }
        for (model, placed) in changes.models {
            self.metrics.placement_changes.with_label_values(&[&model]).inc();
            self.members.events.push(
                &format!("model:{model}"),
                "placed",
                format!("on {:?}: {}", placed.workers, placed.reason),
            );
        }
    }

    fn tick_policies(&self) {
        for t in self.control.all() {
            let members = self.serving_model(&t.model);
            let ready =
                |v: &str| !members.is_empty() && members.iter().all(|m| m.record().offer(&t.model, v).is_some());
            let any_ready = |v: &str| members.iter().any(|m| m.record().offer(&t.model, v).is_some());
            let transitions = t.tick(ready, any_ready, |v| t.in_flight(v));
            for tr in transitions {
                self.announce(tr);
            }
            match t.canary_code() {
                Some((code, percent)) => {
                    self.metrics.canary_state.with_label_values(&[&t.model]).set(code);
                    self.metrics.canary_percent.with_label_values(&[&t.model]).set(percent);
                }
                None => {
                    let _ = self.metrics.canary_state.remove_label_values(&[&t.model]);
                    let _ = self.metrics.canary_percent.remove_label_values(&[&t.model]);
                }
            }
        }
    }

    /// Logs a transition, counts it, and POSTs it to the policy's webhook.
    fn announce(&self, tr: Transition) {
        self.metrics.transitions.with_label_values(&[&tr.model, tr.kind]).inc();
        self.members.events.push(&format!("model:{}", tr.model), tr.kind, tr.detail.clone());
        if let Some(url) = tr.notify {
            let body = serde_json::json!({
                "model": tr.model,
                "event": tr.kind,
                "detail": tr.detail,
                "at_ms": crate::events::now_ms(),
            });
            let http = self.http.clone();
            tokio::spawn(async move {
                let sent = http.post(&url).timeout(Duration::from_secs(5)).json(&body).send().await;
                if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                    tracing::warn!(%url, error = %e, "webhook not delivered");
                }
            });
        }
    }

    /// Asks each worker that serves a declared model to have the versions its policy needs (and,
    /// with `unload_previous`, only those), one load at a time per worker and model.
    fn sync_versions(&self) {
        let placed = self.control.placements.read().clone();
        // Models served from artifacts get their versions from the artifact's config.
        for t in self.control.all().into_iter().filter(|t| !placed.contains_key(&t.model)) {
            let needed = t.needed_versions();
            if needed.is_empty() {
                continue;
            }
            let unload = t.spec().unload_previous;
            for m in self.serving_model(&t.model) {
                let record = m.record();
                let Some(offer) = record.offer(&t.model, "") else { continue };
                let have: BTreeSet<String> = offer.versions.iter().cloned().collect();
                let mut want: BTreeSet<String> = needed.iter().cloned().collect();
                if !unload {
                    want.extend(have.iter().cloned());
                }
                if want == have {
                    continue;
                }
                let key = (m.id.clone(), t.model.clone());
                {
                    let mut syncing = self.control.syncing.lock();
                    if syncing.get(&key).is_some_and(|until| Instant::now() < *until) {
                        continue;
                    }
                    syncing.insert(key.clone(), Instant::now() + Duration::from_secs(3600));
                }
                let Some(fleet) = self.me.upgrade() else { return };
                let model = t.model.clone();
                tokio::spawn(async move {
                    let outcome = fleet.load_versions(&m, &model, &want).await;
                    let until = match &outcome {
                        Ok(()) => {
                            fleet.metrics.version_syncs.with_label_values(&["ok"]).inc();
                            fleet.members.events.push(
                                &m.id,
                                "versions_loaded",
                                format!("model {model}: versions {:?}", want.iter().collect::<Vec<_>>()),
                            );
                            // Until the worker's record shows the change.
                            Instant::now() + Duration::from_millis(2 * m.record().heartbeat_ms.clamp(100, 5000))
                        }
                        Err(e) => {
                            fleet.metrics.version_syncs.with_label_values(&["failed"]).inc();
                            fleet.members.events.push(
                                &m.id,
                                "versions_not_loaded",
                                format!("model {model}: versions {:?}: {}", want.iter().collect::<Vec<_>>(), e.message),
                            );
                            Instant::now() + SYNC_BACKOFF
                        }
                    };
                    fleet.control.syncing.lock().insert((m.id.clone(), model), until);
                });
            }
        }
    }

    /// Loads `model` on `member` with its version policy set to exactly `versions`.
    async fn load_versions(
        &self,
        member: &Member,
        model: &str,
        versions: &BTreeSet<String>,
    ) -> flotilla_core::Result<()> {
        let timeout = self.settings.control_timeout;
        let mut client = member.client.clone();
        let call = client.model_config(pb::ModelConfigRequest { name: model.into(), version: String::new() });
        let config = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(r)) => r.into_inner().config,
            Ok(Err(status)) => return Err(crate::forward::classify(&member.id, status).error),
            Err(_) => return Err(flotilla_core::Error::unavailable("the worker did not answer in time")),
        };
        let mut config =
            config.ok_or_else(|| flotilla_core::Error::internal(format!("the worker sent no config for '{model}'")))?;
        let numbers: Vec<i64> = versions.iter().filter_map(|v| v.parse().ok()).collect();
        config.version_policy = Some(pb::ModelVersionPolicy {
            policy_choice: Some(pb::model_version_policy::PolicyChoice::Specific(pb::model_version_policy::Specific {
                versions: numbers,
            })),
        });
        let json = flotilla_core::config::to_json(&config).to_string();
        use pb::model_repository_parameter::ParameterChoice;
        let parameters = HashMap::from([(
            "config".to_string(),
            pb::ModelRepositoryParameter { parameter_choice: Some(ParameterChoice::StringParam(json)) },
        )]);
        let request =
            pb::RepositoryModelLoadRequest { repository_name: String::new(), model_name: model.into(), parameters };
        match tokio::time::timeout(timeout, client.repository_model_load(request)).await {
            // The worker publishes its new record itself (a repository change wakes its agent).
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(crate::forward::classify(&member.id, status).error),
            Err(_) => Err(flotilla_core::Error::unavailable("the worker did not finish the load in time")),
        }
    }
}
