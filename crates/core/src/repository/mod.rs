//! The model repository: Triton's folder layout, version policies, control
//! modes none / poll / explicit, and atomic reload.
//!
//! Loaded models live in an `ArcSwap`ed map. A reload builds the new entry
//! completely off to the side, then swaps it in: requests that already hold
//! the old version's `Arc` finish on it, new requests see the new one, and a
//! version whose new files fail to load keeps serving its previous load.

mod load;

pub use load::{LoadSettings, ModelVersion};

use crate::error::{Error, Result};
use arc_swap::ArcSwap;
use flotilla_proto::inference::ModelConfig;
use load::fingerprint;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// How the repository decides what to load (Triton's `--model-control-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMode {
    /// Load everything at start; no load/unload API.
    None,
    /// Load everything at start, then rescan every poll interval.
    Poll,
    /// Load only what `--load-model` and the repository API ask for.
    Explicit,
}

/// A loaded model: its configuration and its ready versions.
pub struct LoadedModel {
    pub config: Arc<ModelConfig>,
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
}

/// One row of the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    /// `READY`, `UNAVAILABLE`, or empty for a model that was never loaded.
    pub state: String,
    pub reason: String,
}

#[derive(Debug, Default, Clone)]
struct Status {
    /// Whether the server is meant to serve this model (loaded and not unloaded).
    wanted: bool,
    /// Model-level failure (bad config, no versions).
    error: Option<String>,
    failed_versions: BTreeMap<u64, String>,
    unloaded: bool,
    override_config: Option<ModelConfig>,
    /// Fingerprint of the model folder at the last load attempt (poll mode reloads when it changes).
    print: Option<u64>,
    /// What the load checks found wrong beside the model (a drift profile that does not fit):
    /// the model serves, and the index's reason says it.
    notes: Vec<String>,
}

/// Called with (model, versions, ready) when versions come and go.
type ChangeHook = Box<dyn Fn(&str, &[String], bool) + Send + Sync>;

/// Called with (model, its configuration) after each successful load; a message is a problem
/// with a file beside the model that its plug-in refused.
type LoadCheck = Box<dyn Fn(&str, &ModelConfig) -> Option<String> + Send + Sync>;

/// The model repository.
pub struct Repository {
    root: PathBuf,
    mode: ControlMode,
    settings: LoadSettings,
    models: ArcSwap<HashMap<String, Arc<LoadedModel>>>,
    status: Mutex<BTreeMap<String, Status>>,
    /// Loads and unloads happen one at a time.
    load_lock: tokio::sync::Mutex<()>,
    on_change: parking_lot::RwLock<Vec<ChangeHook>>,
    checks: parking_lot::RwLock<Vec<LoadCheck>>,
}

// === impl Repository ===

impl Repository {
    pub fn new(root: PathBuf, mode: ControlMode, settings: LoadSettings) -> Self {
        Self {
            root,
            mode,
            settings,
            models: ArcSwap::from_pointee(HashMap::new()),
            status: Mutex::new(BTreeMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
            on_change: parking_lot::RwLock::new(Vec::new()),
            checks: parking_lot::RwLock::new(Vec::new()),
        }
    }

    /// Calls `f(model, config)` after each successful load; what it returns shows as the
    /// reason of the model's READY rows in the index (used by drift monitoring to refuse a
    /// profile that does not fit the model).
    pub fn with_load_check(self, f: impl Fn(&str, &ModelConfig) -> Option<String> + Send + Sync + 'static) -> Self {
        self.checks.write().push(Box::new(f));
        self
    }

    /// Calls `f(model, versions, ready)` whenever versions come and go (used for metrics).
    pub fn with_change_hook(self, f: impl Fn(&str, &[String], bool) + Send + Sync + 'static) -> Self {
        self.add_change_hook(f);
        self
    }

    /// Adds a hook called as [`Repository::with_change_hook`]'s (e.g. a fleet worker re-advertising its models).
    pub fn add_change_hook(&self, f: impl Fn(&str, &[String], bool) + Send + Sync + 'static) {
        self.on_change.write().push(Box::new(f));
    }

    fn changed(&self, model: &str, versions: &[String], ready: bool) {
        for hook in self.on_change.read().iter() {
            hook(model, versions, ready);
        }
    }

    pub fn mode(&self) -> ControlMode {
        self.mode
    }

    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Model folder names in the repository, sorted.
    pub fn scan(&self) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| Error::unavailable(format!("cannot read model repository {}: {e}", self.root.display())))?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Loads what the control mode says to load at start: all models for
    /// none/poll, `requested` for explicit (`*` = all). Failures are recorded, not fatal.
    pub async fn load_initial(&self, requested: &[String]) -> Result<()> {
        let all = self.scan()?;
        let names: Vec<String> = match self.mode {
            ControlMode::Explicit if !requested.iter().any(|r| r == "*") => requested.to_vec(),
            _ => all,
        };
        for name in names {
            if let Err(e) = self.load_inner(&name, None).await {
                tracing::warn!(model = %name, error = %e, "model failed to load");
            }
        }
        Ok(())
    }

    fn require_explicit(&self) -> Result<()> {
        if self.mode != ControlMode::Explicit {
            return Err(Error::precondition(
                "explicit model load / unload is not allowed unless --model-control-mode=explicit",
            ));
        }
        Ok(())
    }

    /// Repository API load (explicit mode): loads or reloads `name`, optionally with a config override.
    pub async fn load(&self, name: &str, config: Option<ModelConfig>) -> Result<()> {
        self.require_explicit()?;
        self.load_inner(name, config).await
    }

    /// Repository API unload (explicit mode).
    pub async fn unload(&self, name: &str) -> Result<()> {
        self.require_explicit()?;
        let _guard = self.load_lock.lock().await;
        let known = self.status.lock().contains_key(name) || self.models.load().contains_key(name);
        if !known && !self.scan()?.iter().any(|n| n == name) {
            return Err(Error::not_found(format!("failed to unload '{name}': no such model in the repository")));
        }
        self.remove(name);
        Ok(())
    }

    fn remove(&self, name: &str) {
        let mut map = HashMap::clone(&self.models.load());
        if let Some(old) = map.remove(name) {
            let versions: Vec<String> = old.versions.keys().map(u64::to_string).collect();
            self.changed(name, &versions, false);
        }
        self.models.store(Arc::new(map));
        let mut status = self.status.lock();
        let s = status.entry(name.to_string()).or_default();
        *s = Status { unloaded: true, ..Status::default() };
        tracing::info!(model = name, "unloaded");
    }

    async fn load_inner(&self, name: &str, override_config: Option<ModelConfig>) -> Result<()> {
        let _guard = self.load_lock.lock().await;
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(Error::invalid(format!("invalid model name '{name}'")));
        }
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(Error::not_found(format!("failed to load '{name}': no model folder {}", dir.display())));
        }
        let override_config = override_config.or_else(|| {
            (self.mode == ControlMode::Explicit)
                .then(|| self.status.lock().get(name).and_then(|s| s.override_config.clone()))
                .flatten()
        });
        let print = fingerprint(&dir, false);
        let previous = self.models.load().get(name).cloned();
        let settings = self.settings.clone();
        let (n, d, oc) = (name.to_string(), dir.clone(), override_config.clone());
        let prev_versions = previous.as_ref().map(|p| p.versions.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            load::load_model(&n, &d, oc.as_ref(), prev_versions.as_ref(), &settings)
        })
        .await
        .map_err(|e| Error::internal(format!("loading '{name}' panicked: {e}")))?;

        let mut status = Status { wanted: true, override_config, print: Some(print), ..Status::default() };
        let result = match outcome {
            Ok(outcome) => {
                status.failed_versions = outcome.failed.clone();
                if outcome.versions.is_empty() {
                    let reasons: Vec<String> =
                        outcome.failed.iter().map(|(v, r)| format!("version {v}: {r}")).collect();
                    Err(Error::invalid(format!("failed to load '{name}': {}", reasons.join("; "))))
                } else {
                    let mut map = HashMap::clone(&self.models.load());
                    if let Some(old) = &previous {
                        let gone: Vec<String> = old
                            .versions
                            .keys()
                            .filter(|v| !outcome.versions.contains_key(v))
                            .map(u64::to_string)
                            .collect();
                        self.changed(name, &gone, false);
                    }
                    let now: Vec<String> = outcome.versions.keys().map(u64::to_string).collect();
                    map.insert(
                        name.to_string(),
                        Arc::new(LoadedModel { config: outcome.config, versions: outcome.versions }),
                    );
                    self.models.store(Arc::new(map));
                    self.changed(name, &now, true);
                    let config = self.models.load().get(name).map(|m| m.config.clone());
                    if let Some(config) = config {
                        status.notes = self.checks.read().iter().filter_map(|check| check(name, &config)).collect();
                    }
                    Ok(())
                }
            }
            Err(e) => Err(Error::new(e.kind, e.message)),
        };
        if let Err(e) = &result {
            status.error = Some(if previous.is_some() {
                format!("{}; still serving the previous load", e.message)
            } else {
                e.message.clone()
            });
        }
        self.status.lock().insert(name.to_string(), status);
        result
    }

    /// One poll-mode pass: loads new and changed models, unloads removed ones.
    pub async fn poll(&self) {
        let Ok(names) = self.scan() else { return };
        let loaded = self.models.load_full();
        for name in &names {
            let print = fingerprint(&self.root.join(name), false);
            let last = self.status.lock().get(name).and_then(|s| s.print);
            if last != Some(print) {
                if let Err(e) = self.load_inner(name, None).await {
                    tracing::warn!(model = %name, error = %e, "reload failed");
                }
            }
        }
        for name in loaded.keys() {
            if !names.contains(name) {
                let _guard = self.load_lock.lock().await;
                self.remove(name);
            }
        }
    }

    /// Looks up a ready version; empty `version` means the latest ready one.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ModelVersion>> {
        let models = self.models.load();
        let model = models.get(name).ok_or_else(|| self.unknown_model(name))?;
        if version.is_empty() {
            return model
                .versions
                .values()
                .next_back()
                .cloned()
                .ok_or_else(|| Error::unavailable(format!("model '{name}' has no ready version")));
        }
        let v: u64 = version.parse().map_err(|_| {
            Error::invalid(format!("model '{name}': version '{version}' is not a non-negative integer"))
        })?;
        model
            .versions
            .get(&v)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("Request for unknown model: '{name}' version {v} is not found")))
    }

    fn unknown_model(&self, name: &str) -> Error {
        match self.status.lock().get(name) {
            Some(s) if s.error.is_some() => {
                Error::unavailable(format!("model '{name}' is not ready: {}", s.error.as_deref().unwrap_or_default()))
            }
            Some(s) if s.unloaded => Error::unavailable(format!("model '{name}' is unloaded")),
            // Triton's wording: its clients and example scripts match on it.
            _ => Error::not_found(format!("Request for unknown model: '{name}' is not found")),
        }
    }

    /// The loaded model (config and ready versions).
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>> {
        self.models.load().get(name).cloned().ok_or_else(|| self.unknown_model(name))
    }

    /// All loaded models, by name.
    pub fn loaded(&self) -> Arc<HashMap<String, Arc<LoadedModel>>> {
        self.models.load_full()
    }

    /// Whether every model the server was asked to serve has a ready version.
    pub fn all_ready(&self) -> bool {
        let models = self.models.load();
        self.status.lock().iter().filter(|(_, s)| s.wanted).all(|(n, _)| models.contains_key(n))
    }

    /// The repository index: every model folder, with version states and reasons.
    pub fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        let names = self.scan()?;
        let models = self.models.load();
        let status = self.status.lock();
        let mut out = Vec::new();
        let mut all: Vec<&String> = names.iter().collect();
        for n in models.keys().chain(status.keys()) {
            if !all.contains(&n) {
                all.push(n);
            }
        }
        all.sort();
        for name in all {
            let st = status.get(name).cloned().unwrap_or_default();
            let mut rows = Vec::new();
            if let Some(model) = models.get(name) {
                for v in model.versions.keys() {
                    let mut reasons: Vec<&str> = st.failed_versions.get(v).map(String::as_str).into_iter().collect();
                    reasons.extend(st.notes.iter().map(String::as_str));
                    rows.push(entry(name, &v.to_string(), "READY", &reasons.join("; ")));
                }
            }
            for (v, reason) in &st.failed_versions {
                if !models.get(name).is_some_and(|m| m.versions.contains_key(v)) {
                    rows.push(entry(name, &v.to_string(), "UNAVAILABLE", reason));
                }
            }
            if rows.is_empty() {
                match (&st.error, st.unloaded) {
                    (Some(e), _) => rows.push(entry(name, "", "UNAVAILABLE", e)),
                    (None, true) => rows.push(entry(name, "", "UNAVAILABLE", "unloaded")),
                    (None, false) => rows.push(entry(name, "", "", "")),
                }
            }
            out.extend(rows.into_iter().filter(|r| !ready_only || r.state == "READY"));
        }
        Ok(out)
    }
}

fn entry(name: &str, version: &str, state: &str, reason: &str) -> IndexEntry {
    IndexEntry { name: name.into(), version: version.into(), state: state.into(), reason: reason.into() }
}

#[cfg(test)]
mod tests;
