//! One monitoring window of one model version: the same summaries as the reference, filled
//! from served rows, and its report when it closes.

use crate::compare::{self, Scores};
use crate::monitor::config::DriftConfig;
use crate::profile::{Column, ColumnKind, Profile};
use crate::summary::{CategoricalSummary, Moments, NumericSummary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A column's summary in a window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Acc {
    Numeric(NumericSummary),
    Categorical(CategoricalSummary),
}

/// One value of a column as read from a tensor.
#[derive(Clone, Copy)]
pub enum Cell<'a> {
    Number(f64),
    Text(Option<&'a str>),
}

impl Acc {
    fn new(reference: &Column) -> Acc {
        match &reference.kind {
            ColumnKind::Numeric(r) => Acc::Numeric(r.new_window()),
            ColumnKind::Categorical(_) => Acc::Categorical(CategoricalSummary::default()),
        }
    }

    fn update(&mut self, reference: &Column, cell: Cell<'_>) {
        match (self, &reference.kind, cell) {
            (Acc::Numeric(w), ColumnKind::Numeric(r), Cell::Number(x)) => w.update(x, &r.bin_edges, r.range()),
            (Acc::Numeric(w), ColumnKind::Numeric(_), Cell::Text(_)) => w.missing += 1,
            (Acc::Categorical(w), ColumnKind::Categorical(r), Cell::Text(t)) => w.update(t, Some(r)),
            (Acc::Categorical(w), ColumnKind::Categorical(r), Cell::Number(x)) if x.is_nan() => w.update(None, Some(r)),
            (Acc::Categorical(w), ColumnKind::Categorical(r), Cell::Number(x)) => {
                // a category code named as `flotilla profile` names it, without an allocation per row
                thread_local!(static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) });
                TEXT.with_borrow_mut(|text| {
                    use std::fmt::Write;
                    text.clear();
                    let _ = write!(text, "{x}");
                    w.update(Some(text), Some(r));
                });
            }
            _ => {}
        }
    }

    fn merge(&mut self, other: &Acc) -> Result<(), String> {
        match (self, other) {
            (Acc::Numeric(a), Acc::Numeric(b)) => a.merge(b),
            (Acc::Categorical(a), Acc::Categorical(b)) => a.merge(b),
            _ => return Err("a column is numeric in one window and categorical in the other".into()),
        }
        Ok(())
    }

    fn scores(&self, reference: &Column) -> Scores {
        match (self, &reference.kind) {
            (Acc::Numeric(w), ColumnKind::Numeric(r)) => compare::numeric(r, w),
            (Acc::Categorical(w), ColumnKind::Categorical(r)) => compare::categorical(r, w),
            _ => Scores::default(),
        }
    }

    /// The window's values in brief, with its histogram on the reference's bins (numeric) or
    /// over the categories most frequent in the reference or the window (categorical).
    fn brief(&self, reference: &Column) -> Brief {
        match (self, &reference.kind) {
            (Acc::Numeric(w), _) => Brief {
                count: w.moments.count,
                missing: w.missing,
                mean: (w.moments.count > 0).then_some(w.moments.mean),
                std: (w.moments.count > 0).then(|| w.moments.std()),
                min: w.min,
                max: w.max,
                bins: w.bins.clone(),
                ..Brief::default()
            },
            (Acc::Categorical(w), kind) => {
                let mut shown: BTreeMap<String, u64> =
                    w.top(SHOWN_CATEGORIES).into_iter().map(|(k, n)| (k.to_string(), n)).collect();
                if let ColumnKind::Categorical(r) = kind {
                    for (k, _) in r.top(SHOWN_CATEGORIES) {
                        shown.insert(k.to_string(), w.counts.get(k).copied().unwrap_or(0));
                    }
                }
                let other = w.total() - w.missing - shown.values().sum::<u64>();
                Brief {
                    count: w.total() - w.missing,
                    missing: w.missing,
                    categories: shown,
                    other_categories: other,
                    ..Brief::default()
                }
            }
        }
    }
}

/// Categories a window's histogram names (the most frequent in the window, and in the
/// reference); the rest are counted together.
pub const SHOWN_CATEGORIES: usize = 20;

/// A column's values in a window, in brief.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Brief {
    pub count: u64,
    pub missing: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Numeric: values per reference bin (the profile's `bin_edges`, `len + 1` bins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bins: Vec<u64>,
    /// Categorical: values per category shown ([`SHOWN_CATEGORIES`] most frequent here and in
    /// the reference) ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, u64>,
    /// ... and values of the categories not shown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub other_categories: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How far a metric, a column or the model is from its reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    #[default]
    Ok,
    Moderate,
    Significant,
}

impl Level {
    pub fn gauge(self) -> i64 {
        self as i64
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Moderate => "moderate",
            Level::Significant => "significant",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ColumnReport {
    pub name: String,
    pub scores: Scores,
    /// The worst level any metric reached in this window (before hysteresis).
    pub level: Level,
    /// The metrics at or above their moderate threshold.
    pub breaches: Vec<String>,
    pub window: Brief,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MultivariateReport {
    /// Mean PCA reconstruction error of the window's rows.
    pub error_mean: f64,
    pub reference_error_mean: f64,
    /// `error_mean / reference_error_mean`: 1 when the features move together as in training.
    pub pca_error_ratio: f64,
    pub level: Level,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WindowReport {
    pub index: u64,
    /// RFC 3339 times.
    pub opened: String,
    pub closed: String,
    pub rows: u64,
    pub features: Vec<ColumnReport>,
    pub outputs: Vec<ColumnReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multivariate: Option<MultivariateReport>,
}

/// The open window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    pub index: u64,
    /// Epoch milliseconds (wall clock, for reports and snapshots).
    pub opened_ms: i64,
    pub rows: u64,
    pub features: Vec<Acc>,
    pub outputs: Vec<Acc>,
    pub pca: Moments,
}

impl Window {
    pub fn new(profile: &Profile, index: u64, opened_ms: i64) -> Window {
        Window {
            index,
            opened_ms,
            rows: 0,
            features: profile.features.iter().map(Acc::new).collect(),
            outputs: profile.outputs.iter().map(Acc::new).collect(),
            pca: Moments::default(),
        }
    }

    /// Adds one row: `features` and `outputs` in the profile's column order; `pca_columns` is
    /// where each of the multivariate check's features sits in `features`.
    pub fn add_row(
        &mut self,
        profile: &Profile,
        pca_columns: &[Option<usize>],
        features: &[Cell<'_>],
        outputs: &[Cell<'_>],
        pca_row: &mut Vec<f64>,
    ) {
        self.rows += 1;
        for ((acc, col), cell) in self.features.iter_mut().zip(&profile.features).zip(features) {
            acc.update(col, *cell);
        }
        for ((acc, col), cell) in self.outputs.iter_mut().zip(&profile.outputs).zip(outputs) {
            acc.update(col, *cell);
        }
        if let Some(m) = &profile.multivariate {
            pca_row.clear();
            for i in pca_columns {
                pca_row.push(match i.and_then(|i| features.get(i)) {
                    Some(Cell::Number(x)) => *x,
                    _ => f64::NAN,
                });
            }
            self.pca.update(m.pca.error(pca_row));
        }
    }

    /// Adds a window of the same profile from another worker (the fleet view): every summary
    /// merges, so the result scores like one window of both workers' rows (the sketches within
    /// their error bound, everything else exactly).
    pub fn merge(&mut self, other: &Window) -> Result<(), String> {
        if self.features.len() != other.features.len() || self.outputs.len() != other.outputs.len() {
            return Err(format!(
                "windows of different profiles: {} and {} features, {} and {} outputs",
                self.features.len(),
                other.features.len(),
                self.outputs.len(),
                other.outputs.len()
            ));
        }
        for (a, b) in self.features.iter_mut().zip(&other.features).chain(self.outputs.iter_mut().zip(&other.outputs)) {
            a.merge(b)?;
        }
        self.rows += other.rows;
        self.pca.merge(&other.pca);
        self.opened_ms = self.opened_ms.min(other.opened_ms);
        Ok(())
    }

    pub fn report(&self, profile: &Profile, config: &DriftConfig, closed_ms: i64) -> WindowReport {
        let column = |acc: &Acc, col: &Column| {
            let scores = acc.scores(col);
            let mut level = Level::Ok;
            let mut breaches = Vec::new();
            for (metric, value) in scores.named() {
                let l = level_of(config, metric, value);
                if l > Level::Ok {
                    breaches.push(metric.to_string());
                }
                level = level.max(l);
            }
            ColumnReport { name: col.name.clone(), scores, level, breaches, window: acc.brief(col) }
        };
        let multivariate = profile.multivariate.as_ref().filter(|_| self.pca.count > 0).map(|m| {
            let reference = m.pca.error_mean;
            let ratio = if reference > 0.0 { self.pca.mean / reference } else { 1.0 };
            MultivariateReport {
                error_mean: self.pca.mean,
                reference_error_mean: reference,
                pca_error_ratio: ratio,
                level: level_of(config, "pca_error_ratio", ratio),
            }
        });
        WindowReport {
            index: self.index,
            opened: rfc3339(self.opened_ms),
            closed: rfc3339(closed_ms),
            rows: self.rows,
            features: self.features.iter().zip(&profile.features).map(|(a, c)| column(a, c)).collect(),
            outputs: self.outputs.iter().zip(&profile.outputs).map(|(a, c)| column(a, c)).collect(),
            multivariate,
        }
    }
}

/// Each column's level in `report` (features, outputs, then `multivariate`) with the metrics
/// at or above their thresholds: what moves the alert states.
pub fn column_levels(report: &WindowReport) -> Vec<(String, Level, BTreeMap<String, f64>)> {
    let mut levels: Vec<(String, Level, BTreeMap<String, f64>)> = report
        .features
        .iter()
        .chain(&report.outputs)
        .map(|c| {
            let breached = c.scores.named().into_iter().filter(|(n, _)| c.breaches.iter().any(|b| b == n));
            (c.name.clone(), c.level, breached.map(|(n, x)| (n.to_string(), x)).collect())
        })
        .collect();
    if let Some(mv) = &report.multivariate {
        levels.push((
            "multivariate".into(),
            mv.level,
            BTreeMap::from([("pca_error_ratio".into(), mv.pca_error_ratio)]),
        ));
    }
    levels
}

/// The level of one metric value; changes are judged by size (a missing rate may fall too).
pub fn level_of(config: &DriftConfig, metric: &str, value: f64) -> Level {
    let Some(t) = config.thresholds.get(metric) else { return Level::Ok };
    let v = if metric == "missing_rate_change" { value.abs() } else { value };
    if v >= t.significant {
        Level::Significant
    } else if v >= t.moderate {
        Level::Moderate
    } else {
        Level::Ok
    }
}

/// Epoch milliseconds as RFC 3339 UTC (`2026-11-24T12:00:00.000Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms.rem_euclid(1000))
}
