//! Per-model monitoring settings: the optional `drift.toml` in the model's folder.
//!
//! ```toml
//! [window]
//! rows = 1000        # a window closes after this many rows ...
//! seconds = 60       # ... or this long after it opened (0: rows only)
//!
//! [alerts]
//! consecutive = 2    # windows a new level must hold before the state changes (hysteresis)
//! webhook = "http://alerts.internal/drift"   # JSON POST per state change
//!
//! [thresholds.psi]   # any metric: psi, jensen_shannon, wasserstein, ks, missing_rate_change,
//! moderate = 0.1     # out_of_range_rate, new_category_rate, pca_error_ratio
//! significant = 0.25
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub const FILE_NAME: &str = "drift.toml";

/// A metric's two alert levels: at or above `moderate`, at or above `significant`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub moderate: f64,
    pub significant: f64,
}

/// Defaults: PSI's customary 0.1 / 0.25; distances set so that stable data in a 500-row window
/// stays well below them (measured in the tests: 1,000 stable windows, no alert).
pub fn default_thresholds() -> BTreeMap<String, Threshold> {
    let t = |m, s| Threshold { moderate: m, significant: s };
    BTreeMap::from([
        ("psi".into(), t(0.1, 0.25)),
        ("jensen_shannon".into(), t(0.15, 0.3)),
        ("wasserstein".into(), t(0.25, 0.5)),
        ("ks".into(), t(0.1, 0.2)),
        ("missing_rate_change".into(), t(0.05, 0.2)),
        ("out_of_range_rate".into(), t(0.02, 0.1)),
        ("new_category_rate".into(), t(0.02, 0.1)),
        ("pca_error_ratio".into(), t(1.2, 1.5)),
    ])
}

#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    pub window_rows: u64,
    pub window_time: Option<Duration>,
    pub consecutive: u32,
    pub webhook: Option<String>,
    pub thresholds: BTreeMap<String, Threshold>,
    /// Closed windows kept for `/drift`.
    pub history: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            window_rows: 1000,
            window_time: Some(Duration::from_secs(60)),
            consecutive: 2,
            webhook: None,
            thresholds: default_thresholds(),
            history: 20,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    window: RawWindow,
    #[serde(default)]
    alerts: RawAlerts,
    #[serde(default)]
    thresholds: BTreeMap<String, Threshold>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    rows: Option<u64>,
    seconds: Option<f64>,
    history: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    consecutive: Option<u32>,
    webhook: Option<String>,
}

impl DriftConfig {
    /// Parses `drift.toml`; errors name the problem (unknown keys and metrics included).
    pub fn parse(text: &str) -> Result<DriftConfig, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| format!("{FILE_NAME}: {e}"))?;
        let mut c = DriftConfig::default();
        if let Some(rows) = raw.window.rows {
            if rows == 0 {
                return Err(format!("{FILE_NAME}: window.rows must be > 0"));
            }
            c.window_rows = rows;
        }
        if let Some(s) = raw.window.seconds {
            if !(s.is_finite() && s >= 0.0) {
                return Err(format!("{FILE_NAME}: window.seconds must be >= 0, not {s}"));
            }
            c.window_time = (s > 0.0).then(|| Duration::from_secs_f64(s));
        }
        if let Some(h) = raw.window.history {
            c.history = h.clamp(1, 1000);
        }
        if let Some(n) = raw.alerts.consecutive {
            c.consecutive = n.max(1);
        }
        c.webhook = raw.alerts.webhook;
        for (metric, t) in raw.thresholds {
            if !c.thresholds.contains_key(&metric) {
                let known: Vec<&str> = c.thresholds.keys().map(String::as_str).collect();
                return Err(format!(
                    "{FILE_NAME}: unknown metric '{metric}' in [thresholds] (known: {})",
                    known.join(", ")
                ));
            }
            if t.moderate.is_nan() || t.significant.is_nan() || t.moderate > t.significant {
                return Err(format!("{FILE_NAME}: thresholds.{metric}: moderate must be <= significant"));
            }
            c.thresholds.insert(metric, t);
        }
        Ok(c)
    }
}
