//! One window against the reference: every drift metric of every column.

use crate::distance::{jensen_shannon, ks_and_wasserstein, psi, Sample};
use crate::profile::NumericReference;
use crate::summary::{CategoricalSummary, NumericSummary};
use serde::{Deserialize, Serialize};

/// The metrics of one column in one window. A metric is absent when it cannot be computed
/// (no value in the window, or none in the reference).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Population stability index on the reference decile bins (or categories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<f64>,
    /// Jensen–Shannon distance, base 2, on the same bins (or categories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jensen_shannon: Option<f64>,
    /// Wasserstein-1 distance divided by the reference's standard deviation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasserstein: Option<f64>,
    /// Kolmogorov–Smirnov statistic D, from the sketches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks: Option<f64>,
    /// Window missing rate minus the reference's.
    pub missing_rate_change: f64,
    /// Share of the window's values outside the reference's [min, max] (numeric).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_range_rate: Option<f64>,
    /// Share of the window's values in categories the reference never saw (categorical).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_category_rate: Option<f64>,
}

impl Scores {
    /// (metric name, value) for every metric present, in a fixed order.
    pub fn named(&self) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        let mut put = |n, v: Option<f64>| {
            if let Some(v) = v {
                out.push((n, v));
            }
        };
        put("psi", self.psi);
        put("jensen_shannon", self.jensen_shannon);
        put("wasserstein", self.wasserstein);
        put("ks", self.ks);
        put("missing_rate_change", Some(self.missing_rate_change));
        put("out_of_range_rate", self.out_of_range_rate);
        put("new_category_rate", self.new_category_rate);
        out
    }
}

pub fn numeric(reference: &NumericReference, window: &NumericSummary) -> Scores {
    let r = &reference.summary;
    let (rs, ws) = (reference.sample(), &Sample::weighted(&window.sketch.weighted()));
    let std = r.moments.std();
    let distances = ks_and_wasserstein(rs, ws);
    Scores {
        psi: psi(&r.bins, &window.bins),
        jensen_shannon: jensen_shannon(&r.bins, &window.bins),
        wasserstein: distances.map(|(_, w)| if std > 0.0 { w / std } else { w }),
        ks: distances.map(|(d, _)| d),
        missing_rate_change: window.missing_rate() - r.missing_rate(),
        out_of_range_rate: (window.moments.count > 0).then(|| window.out_of_range_rate()),
        new_category_rate: None,
    }
}

pub fn categorical(reference: &CategoricalSummary, window: &CategoricalSummary) -> Scores {
    let (r, w) = reference.aligned(window);
    Scores {
        psi: psi(&r, &w),
        jensen_shannon: jensen_shannon(&r, &w),
        missing_rate_change: window.missing_rate() - reference.missing_rate(),
        new_category_rate: (window.total() > window.missing).then(|| window.new_rate()),
        ..Scores::default()
    }
}
