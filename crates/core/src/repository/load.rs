//! Loading one model folder: its configuration (given, parsed or completed),
//! the versions its policy selects, and a scheduler with engine instances per version.

use crate::config;
use crate::engine::{AutocompleteOptions, Backend};
use crate::error::{Error, Result};
use crate::metrics::VersionMetrics;
use crate::scheduler::{Policy, Scheduler};
use crate::stats::ModelStats;
use flotilla_proto::inference::{model_version_policy::PolicyChoice, ModelConfig};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One loaded, servable model version.
pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    pub version_str: String,
    pub config: Arc<ModelConfig>,
    pub scheduler: Scheduler,
    pub stats: ModelStats,
    /// Metric handles with this version's labels, resolved on first use.
    pub metrics: std::sync::OnceLock<VersionMetrics>,
    /// Output name → class labels (from `label_filename`), for the classification extension.
    pub labels: HashMap<String, Arc<Vec<String>>>,
    /// Fingerprint of the version folder and the model-level files it was loaded from.
    pub(crate) fingerprint: (u64, u64),
}

impl std::fmt::Debug for ModelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelVersion({}/{})", self.name, self.version)
    }
}

/// The outcome of loading a model folder.
pub(crate) struct LoadOutcome {
    pub config: Arc<ModelConfig>,
    pub versions: BTreeMap<u64, Arc<ModelVersion>>,
    /// Versions that failed, with their reasons.
    pub failed: BTreeMap<u64, String>,
}

/// Settings that apply to every load.
#[derive(Clone)]
pub struct LoadSettings {
    pub backends: Vec<Arc<dyn Backend>>,
    pub autocomplete: AutocompleteOptions,
    /// Engine instances per version when the config has no instance_group.
    pub default_instances: usize,
}

/// Numeric version folders of a model, with their paths.
pub(crate) fn version_dirs(model_dir: &Path) -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(model_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Ok(v) = name.parse::<u64>() {
                if e.path().is_dir() {
                    out.insert(v, e.path());
                }
            }
        }
    }
    out
}

/// Hash of file names, sizes and modification times under `dir`, skipping
/// numeric version folders when `skip_versions` (those are hashed per version).
pub(crate) fn fingerprint(dir: &Path, skip_versions: bool) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    fn walk(dir: &Path, skip_versions: bool, depth: usize, h: &mut impl Hasher) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if skip_versions && depth == 0 && name.to_string_lossy().parse::<u64>().is_ok() {
                    continue;
                }
                name.hash(h);
                walk(&e.path(), skip_versions, depth + 1, h);
            } else {
                name.hash(h);
                meta.len().hash(h);
                meta.modified().ok().hash(h);
            }
        }
    }
    walk(dir, skip_versions, 0, &mut h);
    h.finish()
}

/// Reads `config.pbtxt` (or takes `override_config`), then completes it from the model file.
pub(crate) fn resolve_config(
    name: &str,
    model_dir: &Path,
    override_config: Option<&ModelConfig>,
    settings: &LoadSettings,
) -> Result<(ModelConfig, Arc<dyn Backend>)> {
    let pbtxt = model_dir.join("config.pbtxt");
    let mut config = match override_config {
        Some(c) => c.clone(),
        None if pbtxt.exists() => {
            let text = std::fs::read_to_string(&pbtxt)
                .map_err(|e| Error::invalid(format!("{}: cannot read: {e}", pbtxt.display())))?;
            config::parse_pbtxt(&text, &format!("{name}/config.pbtxt"))?
        }
        None => ModelConfig::default(),
    };
    if !config.name.is_empty() && config.name != name {
        return Err(Error::invalid(format!(
            "{name}/config.pbtxt: name '{}' does not match the model folder '{name}'",
            config.name
        )));
    }
    config.name = name.to_string();
    config::check_model_filename(&config, &format!("{name}/config.pbtxt"))?;
    let versions = version_dirs(model_dir);
    let backend = pick_backend(&config, &versions, settings)?;
    if config.platform.is_empty() && config.backend.is_empty() {
        config.platform = backend.platform().to_string();
    }
    if config.backend.is_empty() {
        config.backend = backend.name().to_string();
    }
    if config.input.is_empty() || config.output.is_empty() {
        let (_, dir) = versions.iter().next_back().ok_or_else(|| {
            Error::invalid(format!("{name}: no numeric version folder to complete the configuration from"))
        })?;
        let file = model_file(&config, backend.as_ref(), dir);
        backend.autocomplete(&mut config, &file, &settings.autocomplete)?;
    }
    config::validate(&mut config, &format!("{name}/config.pbtxt"))?;
    Ok((config, backend))
}

/// The model file of a version folder: the configured `default_model_filename`, else the
/// first of the backend's default names that exists (else its first, for the error message).
fn model_file(config: &ModelConfig, backend: &dyn Backend, dir: &Path) -> PathBuf {
    if !config.default_model_filename.is_empty() {
        return dir.join(&config.default_model_filename);
    }
    let names = backend.default_filenames();
    let found = names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
    found.unwrap_or_else(|| dir.join(names.first().copied().unwrap_or("model")))
}

fn pick_backend(
    config: &ModelConfig,
    versions: &BTreeMap<u64, PathBuf>,
    settings: &LoadSettings,
) -> Result<Arc<dyn Backend>> {
    if !config.platform.is_empty() || !config.backend.is_empty() {
        return settings.backends.iter().find(|b| b.serves(config)).cloned().ok_or_else(|| {
            Error::invalid(format!(
                "{}: no backend serves platform '{}' / backend '{}' (available: {})",
                config.name,
                config.platform,
                config.backend,
                settings.backends.iter().map(|b| b.name()).collect::<Vec<_>>().join(", ")
            ))
        });
    }
    for dir in versions.values().rev() {
        for b in &settings.backends {
            let found = if config.default_model_filename.is_empty() {
                b.recognises(dir)
            } else {
                dir.join(&config.default_model_filename).is_file()
            };
            if found {
                return Ok(b.clone());
            }
        }
    }
    Err(Error::invalid(format!(
        "{}: config.pbtxt names no platform or backend, and no version folder holds a file a backend recognises ({})",
        config.name,
        settings.backends.iter().flat_map(|b| b.default_filenames().iter().copied()).collect::<Vec<_>>().join(", ")
    )))
}

/// Versions the policy selects among those on disk.
pub(crate) fn select_versions(config: &ModelConfig, on_disk: &BTreeMap<u64, PathBuf>) -> Vec<u64> {
    match config.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref()) {
        Some(PolicyChoice::All(_)) => on_disk.keys().copied().collect(),
        Some(PolicyChoice::Specific(s)) => {
            s.versions.iter().filter_map(|v| u64::try_from(*v).ok()).filter(|v| on_disk.contains_key(v)).collect()
        }
        Some(PolicyChoice::Latest(l)) => on_disk.keys().rev().take(l.num_versions.max(1) as usize).copied().collect(),
        None => on_disk.keys().next_back().copied().into_iter().collect(),
    }
}

/// Loads (or reuses from `previous`) every version the policy selects.
pub(crate) fn load_model(
    name: &str,
    model_dir: &Path,
    override_config: Option<&ModelConfig>,
    previous: Option<&BTreeMap<u64, Arc<ModelVersion>>>,
    settings: &LoadSettings,
) -> Result<LoadOutcome> {
    let (config, backend) = resolve_config(name, model_dir, override_config, settings)?;
    let config = Arc::new(config);
    let on_disk = version_dirs(model_dir);
    let wanted = select_versions(&config, &on_disk);
    if wanted.is_empty() {
        return Err(Error::invalid(format!("{name}: no version folder matches the version policy")));
    }
    let labels = read_labels(name, model_dir, &config)?;
    let model_print = fingerprint(model_dir, true);
    let mut versions = BTreeMap::new();
    let mut failed = BTreeMap::new();
    for v in wanted {
        let dir = &on_disk[&v];
        let print = (model_print, fingerprint(dir, false));
        let old = previous.and_then(|p| p.get(&v));
        if let Some(old) = old.filter(|o| o.fingerprint == print && *o.config == *config) {
            versions.insert(v, old.clone());
            continue;
        }
        let label = format!("{name}/{v}");
        let file = model_file(&config, backend.as_ref(), dir);
        let loaded = Policy::from_config(&config, &format!("{name}/config.pbtxt")).and_then(|policy| {
            let engine = backend.load(&config, &file)?;
            Scheduler::start(engine, policy, instance_count(&config, settings.default_instances), &label)
        });
        match loaded {
            Ok(scheduler) => {
                tracing::info!(model = name, version = v, "loaded");
                let mv = ModelVersion {
                    name: name.to_string(),
                    version: v,
                    version_str: v.to_string(),
                    config: config.clone(),
                    scheduler,
                    stats: ModelStats::default(),
                    metrics: Default::default(),
                    labels: labels.clone(),
                    fingerprint: print,
                };
                versions.insert(v, Arc::new(mv));
            }
            Err(e) => {
                tracing::warn!(model = name, version = v, error = %e, "version failed to load");
                if let Some(old) = old {
                    versions.insert(v, old.clone());
                    failed.insert(v, format!("new files failed to load, still serving the previous load: {e}"));
                } else {
                    failed.insert(v, e.message);
                }
            }
        }
    }
    Ok(LoadOutcome { config, versions, failed })
}

fn instance_count(config: &ModelConfig, default: usize) -> usize {
    let total: i32 = config.instance_group.iter().map(|g| g.count.max(1)).sum();
    if total > 0 {
        total as usize
    } else {
        default.max(1)
    }
}

fn read_labels(name: &str, model_dir: &Path, config: &ModelConfig) -> Result<HashMap<String, Arc<Vec<String>>>> {
    let mut out = HashMap::new();
    for o in &config.output {
        if o.label_filename.is_empty() {
            continue;
        }
        let path = model_dir.join(&o.label_filename);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::invalid(format!("{name}: output '{}': cannot read label file {}: {e}", o.name, path.display()))
        })?;
        out.insert(o.name.clone(), Arc::new(text.lines().map(str::to_string).collect()));
    }
    Ok(out)
}
