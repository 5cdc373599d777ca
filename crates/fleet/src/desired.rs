//! The fleet's desired state: `fleet.toml`, declared by the operator in one place and watched by
//! the router. Per model: the version unversioned requests go to (a change of it is a
//! zero-downtime rollout), and at most one traffic policy — a canary ramp with automatic
//! rollback, an A/B split, or a shadow. A declaration that is not valid is refused with the
//! file, line and reason, and the router keeps the last good state.
//!
//! ```toml
//! [models.fraud_xgb]
//! version = "1"                       # the stable version
//!
//! [models.fraud_xgb.canary]
//! version = "2"
//! steps = [1, 10, 50, 100]            # percent of the model's unversioned traffic
//! hold_s = 30                         # each step's hold time
//! max_error_rate_increase = 0.01      # canary error rate ≤ stable's + this
//! max_p99_ratio = 1.5                 # canary p99 ≤ stable's × this
//! min_requests = 50                   # canary requests a step needs before it is judged
//! webhook = "http://alerts:9000/hook" # POSTed on promotion and rollback
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use toml::Spanned;

/// A declaration the router refuses: where, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct DesiredError {
    pub file: String,
    /// 1-based; 0 when the file could not be read.
    pub line: usize,
    pub reason: String,
}

/// The whole desired state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    pub models: BTreeMap<String, ModelSpec>,
}

/// One model's declaration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSpec {
    /// The stable version; empty: each worker's latest ready version.
    pub version: String,
    /// After a rollout moves traffic off a version, unload it from workers (explicit model
    /// control mode) once nothing is in flight on it.
    pub unload_previous: bool,
    pub policy: Option<Policy>,
    /// Placement, for a model the router serves to workers (`artifact`); None: the model comes
    /// from the workers' own repositories.
    pub placement: Option<PlacementSpec>,
}

/// Where a model served from the router's artifact runs.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementSpec {
    /// The model folder (config.pbtxt + version folders), resolved against fleet.toml's folder.
    pub artifact: std::path::PathBuf,
    /// Replicas on guaranteed workers: a floor that survives losing every opportunistic worker.
    pub min_guaranteed: usize,
    /// Most replicas in all (guaranteed floor + opportunistic).
    pub max: usize,
    /// Allowed hardware kinds (`cpu-*` matches a prefix); empty: any.
    pub hardware: Vec<String>,
}

impl PlacementSpec {
    pub fn allows(&self, hardware: &str) -> bool {
        self.hardware.is_empty()
            || self.hardware.iter().any(|h| match h.strip_suffix('*') {
                Some(prefix) => hardware.starts_with(prefix),
                None => hardware == h,
            })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    Canary(CanarySpec),
    Ab(AbSpec),
    Shadow(ShadowSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CanarySpec {
    pub version: String,
    /// Percent of traffic at each step, increasing, the last ≤ 100.
    pub steps: Vec<f64>,
    pub hold_s: f64,
    pub max_error_rate_increase: f64,
    pub max_p99_ratio: f64,
    pub min_requests: u64,
    pub webhook: Option<String>,
}

/// How an A/B request picks its arm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitBy {
    /// A stable hash of this request header (forwarded into the request's parameters).
    Header(String),
    /// A stable hash of this request parameter.
    Parameter(String),
    /// A stable hash of the first element of this input tensor (an entity key).
    Input(String),
    /// No key: each request draws at random.
    Random,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AbSpec {
    pub split_by: SplitBy,
    pub arms: Vec<Arm>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub name: String,
    pub version: String,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSpec {
    pub version: String,
    /// Percent of the model's requests mirrored to the candidate.
    pub percent: f64,
    /// Most mirrored requests in flight at once; beyond it a mirror is skipped (never queued).
    pub max_in_flight: usize,
    /// Absolute difference above which an output element counts as different.
    pub tolerance: f64,
}

// --- the file's shape (serde), spans kept for error lines ---

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    models: BTreeMap<Spanned<String>, Spanned<ModelDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelDoc {
    #[serde(default)]
    version: Option<Spanned<VersionDoc>>,
    #[serde(default)]
    unload_previous: bool,
    #[serde(default)]
    artifact: Option<String>,
    #[serde(default)]
    min_guaranteed: Option<usize>,
    #[serde(default)]
    max: Option<usize>,
    #[serde(default)]
    hardware: Vec<String>,
    #[serde(default)]
    canary: Option<Spanned<CanaryDoc>>,
    #[serde(default)]
    ab: Option<Spanned<AbDoc>>,
    #[serde(default)]
    shadow: Option<Spanned<ShadowDoc>>,
}

/// A version written as a string or an integer.
#[derive(Deserialize)]
#[serde(untagged)]
enum VersionDoc {
    Text(String),
    Number(i64),
}

impl VersionDoc {
    fn text(&self) -> String {
        match self {
            VersionDoc::Text(s) => s.clone(),
            VersionDoc::Number(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryDoc {
    version: VersionDoc,
    #[serde(default = "default_steps")]
    steps: Vec<f64>,
    #[serde(default = "default_hold")]
    hold_s: f64,
    #[serde(default = "default_error_increase")]
    max_error_rate_increase: f64,
    #[serde(default = "default_p99_ratio")]
    max_p99_ratio: f64,
    #[serde(default = "default_min_requests")]
    min_requests: u64,
    #[serde(default)]
    webhook: Option<String>,
}

fn default_steps() -> Vec<f64> {
    vec![1.0, 10.0, 50.0, 100.0]
}
fn default_hold() -> f64 {
    60.0
}
fn default_error_increase() -> f64 {
    0.01
}
fn default_p99_ratio() -> f64 {
    1.5
}
fn default_min_requests() -> u64 {
    50
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbDoc {
    #[serde(default)]
    split_by: Option<String>,
    arms: Vec<ArmDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmDoc {
    name: String,
    version: VersionDoc,
    weight: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowDoc {
    version: VersionDoc,
    #[serde(default = "default_shadow_percent")]
    percent: f64,
    #[serde(default = "default_shadow_in_flight")]
    max_in_flight: usize,
    #[serde(default)]
    tolerance: f64,
}

fn default_shadow_percent() -> f64 {
    100.0
}
fn default_shadow_in_flight() -> usize {
    64
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<DesiredState, DesiredError> {
    let text = std::fs::read_to_string(path).map_err(|e| DesiredError {
        file: path.display().to_string(),
        line: 0,
        reason: format!("cannot read it: {e}"),
    })?;
    parse(&path.display().to_string(), &text)
}

/// Parses and checks a desired state; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<DesiredState, DesiredError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1;
    let fail = |offset: usize, reason: String| DesiredError { file: file.to_string(), line: line_of(offset), reason };
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        fail(offset, e.message().trim().to_string())
    })?;
    let mut state = DesiredState::default();
    for (name, model) in doc.models {
        let at = model.span().start;
        let (name, model) = (name.into_inner(), model.into_inner());
        let ctx = |reason: String| fail(at, format!("model '{name}': {reason}"));
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(ctx("not a valid model name".into()));
        }
        let version = match &model.version {
            Some(v) => {
                check_version(&v.get_ref().text()).map_err(|r| fail(v.span().start, format!("model '{name}': {r}")))?
            }
            None => String::new(),
        };
        let declared = [model.canary.is_some(), model.ab.is_some(), model.shadow.is_some()];
        if declared.iter().filter(|d| **d).count() > 1 {
            return Err(ctx("declare at most one of canary, ab and shadow".into()));
        }
        let policy = if let Some(c) = model.canary {
            let at = c.span().start;
            Some(Policy::Canary(
                canary(c.into_inner(), &version).map_err(|r| fail(at, format!("model '{name}': canary: {r}")))?,
            ))
        } else if let Some(ab) = model.ab {
            let at = ab.span().start;
            Some(Policy::Ab(ab_spec(ab.into_inner()).map_err(|r| fail(at, format!("model '{name}': ab: {r}")))?))
        } else if let Some(s) = model.shadow {
            let at = s.span().start;
            Some(Policy::Shadow(
                shadow(s.into_inner(), &version).map_err(|r| fail(at, format!("model '{name}': shadow: {r}")))?,
            ))
        } else {
            None
        };
        let placement = match model.artifact {
            None => {
                if model.min_guaranteed.is_some() || model.max.is_some() || !model.hardware.is_empty() {
                    return Err(ctx(
                        "min_guaranteed, max and hardware place a model served from `artifact`; set it".into()
                    ));
                }
                None
            }
            Some(a) => {
                let base = Path::new(file).parent().unwrap_or(Path::new("."));
                let artifact = base.join(&a);
                if !artifact.join("config.pbtxt").is_file() {
                    return Err(ctx(format!("artifact {a:?}: {} has no config.pbtxt", artifact.display())));
                }
                let min_guaranteed = model.min_guaranteed.unwrap_or(1);
                let max = model.max.unwrap_or(usize::MAX);
                if max == 0 || max < min_guaranteed {
                    return Err(ctx(format!(
                        "max = {max} must be at least 1 and at least min_guaranteed ({min_guaranteed})"
                    )));
                }
                if model.hardware.iter().any(|h| h.is_empty() || h[..h.len() - 1].contains('*')) {
                    return Err(ctx("hardware kinds are names, or a prefix followed by one '*'".into()));
                }
                Some(PlacementSpec { artifact, min_guaranteed, max, hardware: model.hardware })
            }
        };
        state.models.insert(name, ModelSpec { version, unload_previous: model.unload_previous, policy, placement });
    }
    Ok(state)
}

fn check_version(v: &str) -> Result<String, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n.to_string()),
        _ => Err(format!("version {v:?} must be a positive integer (a version folder's name)")),
    }
}

fn finite(what: &str, x: f64, lo: f64, hi: f64) -> Result<f64, String> {
    if x.is_finite() && (lo..=hi).contains(&x) {
        Ok(x)
    } else {
        Err(format!("{what} = {x} must be from {lo} to {hi}"))
    }
}

fn canary(c: CanaryDoc, stable: &str) -> Result<CanarySpec, String> {
    let version = check_version(&c.version.text())?;
    if version == stable {
        return Err(format!("the canary version {version} is the stable version"));
    }
    if c.steps.is_empty() || c.steps.len() > 100 {
        return Err("steps must list 1 to 100 percentages".into());
    }
    let mut last = 0.0;
    for s in &c.steps {
        finite("a step", *s, 0.0, 100.0)?;
        if *s <= last {
            return Err(format!("steps must increase and be above 0 (got {:?})", c.steps));
        }
        last = *s;
    }
    if let Some(w) = &c.webhook {
        if !(w.starts_with("http://") || w.starts_with("https://")) {
            return Err(format!("webhook {w:?} must be an http:// or https:// URL"));
        }
    }
    Ok(CanarySpec {
        version,
        steps: c.steps,
        hold_s: finite("hold_s", c.hold_s, 0.0, 7.0 * 86_400.0)?,
        max_error_rate_increase: finite("max_error_rate_increase", c.max_error_rate_increase, 0.0, 1.0)?,
        max_p99_ratio: finite("max_p99_ratio", c.max_p99_ratio, 1.0, 1000.0)?,
        min_requests: c.min_requests.max(1),
        webhook: c.webhook,
    })
}

fn ab_spec(ab: AbDoc) -> Result<AbSpec, String> {
    let split_by = match ab.split_by.as_deref() {
        None | Some("random") => SplitBy::Random,
        Some(s) => match s.split_once(':') {
            Some(("header", h)) if !h.is_empty() => SplitBy::Header(h.to_ascii_lowercase()),
            Some(("parameter", p)) if !p.is_empty() => SplitBy::Parameter(p.to_string()),
            Some(("input", i)) if !i.is_empty() => SplitBy::Input(i.to_string()),
            _ => {
                return Err(format!(
                    "split_by {s:?}: expected \"header:NAME\", \"parameter:NAME\", \"input:NAME\" or \"random\""
                ))
            }
        },
    };
    if ab.arms.len() < 2 || ab.arms.len() > 16 {
        return Err("arms must list 2 to 16 arms".into());
    }
    let mut arms = Vec::new();
    for a in ab.arms {
        if a.name.is_empty() || !a.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) {
            return Err(format!("arm name {:?} must be letters, digits, '-' or '_'", a.name));
        }
        if arms.iter().any(|x: &Arm| x.name == a.name) {
            return Err(format!("arm '{}' is declared twice", a.name));
        }
        let weight = finite(&format!("arm '{}' weight", a.name), a.weight, 0.0, 1e6)?;
        arms.push(Arm { name: a.name, version: check_version(&a.version.text())?, weight });
    }
    if arms.iter().map(|a| a.weight).sum::<f64>() <= 0.0 {
        return Err("the arms' weights add up to 0".into());
    }
    Ok(AbSpec { split_by, arms })
}

fn shadow(s: ShadowDoc, stable: &str) -> Result<ShadowSpec, String> {
    let version = check_version(&s.version.text())?;
    if version == stable {
        return Err(format!("the shadow version {version} is the stable version"));
    }
    if s.max_in_flight == 0 || s.max_in_flight > 100_000 {
        return Err("max_in_flight must be from 1 to 100000".into());
    }
    Ok(ShadowSpec {
        version,
        percent: finite("percent", s.percent, 0.0, 100.0)?,
        max_in_flight: s.max_in_flight,
        tolerance: finite("tolerance", s.tolerance, 0.0, f64::MAX)?,
    })
}

impl DesiredState {
    /// Request header names the A/B splits key on (the adapters copy them into parameters).
    pub fn headers(&self) -> Vec<String> {
        self.models
            .values()
            .filter_map(|m| match &m.policy {
                Some(Policy::Ab(AbSpec { split_by: SplitBy::Header(h), .. })) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[models.simple]
version = 1

[models.simple.canary]
version = "2"
steps = [10, 50, 100]
hold_s = 5

[models.ranker.ab]
split_by = "header:X-User"
arms = [{ name = "a", version = "1", weight = 1 }, { name = "b", version = 2, weight = 1 }]

[models.fraud.shadow]
version = 3
percent = 25
"#;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let s = parse("fleet.toml", GOOD).unwrap();
        let simple = &s.models["simple"];
        assert_eq!(simple.version, "1");
        let Some(Policy::Canary(c)) = &simple.policy else { panic!("{simple:?}") };
        assert_eq!(
            (c.version.as_str(), c.steps.clone(), c.hold_s, c.min_requests),
            ("2", vec![10.0, 50.0, 100.0], 5.0, 50)
        );
        let Some(Policy::Ab(ab)) = &s.models["ranker"].policy else { panic!() };
        assert_eq!(ab.split_by, SplitBy::Header("x-user".into()));
        assert_eq!(ab.arms[1].version, "2");
        let Some(Policy::Shadow(sh)) = &s.models["fraud"].policy else { panic!() };
        assert_eq!((sh.version.as_str(), sh.percent, sh.max_in_flight), ("3", 25.0, 64));
        assert_eq!(s.headers(), vec!["x-user".to_string()]);
        assert_eq!(parse("f", "").unwrap(), DesiredState::default());
    }

    #[test]
    fn bad_declarations_name_the_file_line_and_reason() {
        let cases = [
            ("[models.m]\nversion = \"x\"\n", 2, "positive integer"),
            ("[models.m]\nversoin = 1\n", 2, "unknown field"),
            ("[models.m.canary]\nversion = 2\nsteps = [50, 10]\n", 1, "steps must increase"),
            ("[models.m]\nversion = 2\n[models.m.canary]\nversion = 2\n", 3, "is the stable version"),
            ("[models.m.ab]\narms = [{ name = \"a\", version = 1, weight = 1 }]\n", 1, "2 to 16 arms"),
            ("[models.m.ab]\nsplit_by = \"cookie:x\"\narms = []\n", 1, "split_by"),
            ("[models.m.shadow]\nversion = 2\npercent = 150\n", 1, "percent = 150"),
            ("[models.m.shadow]\nversion = 2\n[models.m.canary]\nversion = 3\n", 1, "at most one"),
            ("[models.m\n", 1, ""),
            ("\n\n[models.m.canary]\nversion = 2\nmax_p99_ratio = 0.5\n", 3, "max_p99_ratio"),
        ];
        for (text, line, reason) in cases {
            let e = parse("fleet.toml", text).unwrap_err();
            assert_eq!(e.file, "fleet.toml");
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.reason.contains(reason), "{text:?}: {e}");
        }
    }
}
