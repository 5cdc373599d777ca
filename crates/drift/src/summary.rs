//! Mergeable summaries of one column: numeric (moments, extremes, a KLL sketch, counts per
//! reference bin, missing and out-of-range counts) and categorical (counts per category). The
//! reference profile and every monitoring window hold the same summaries.

use crate::distance::bin_of;
use crate::kll::Kll;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Count, mean and variance (Welford), mergeable (Chan et al.).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub count: u64,
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Moments {
    pub fn update(&mut self, x: f64) {
        self.count += 1;
        let d = x - self.mean;
        self.mean += d / self.count as f64;
        self.m2 += d * (x - self.mean);
    }

    pub fn merge(&mut self, o: &Moments) {
        if o.count == 0 {
            return;
        }
        let n = self.count + o.count;
        let d = o.mean - self.mean;
        self.mean += d * o.count as f64 / n as f64;
        self.m2 += o.m2 + d * d * self.count as f64 * o.count as f64 / n as f64;
        self.count = n;
    }

    /// Population standard deviation (ddof 0, numpy's default).
    pub fn std(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.m2 / self.count as f64).sqrt()
        }
    }
}

/// One numeric column over a reference set or a window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NumericSummary {
    pub moments: Moments,
    /// NaN, infinite (or absent) values.
    pub missing: u64,
    /// Smallest and largest value (None before the first).
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Values outside the reference's [min, max] (always 0 in the reference itself).
    pub out_of_range: u64,
    /// Count per reference bin (`bin_edges.len() + 1` bins; see [`crate::distance::bin_of`]).
    pub bins: Vec<u64>,
    pub sketch: Kll,
}

impl NumericSummary {
    pub fn new(bin_count: usize, k: u16) -> Self {
        Self {
            moments: Moments::default(),
            missing: 0,
            min: None,
            max: None,
            out_of_range: 0,
            bins: vec![0; bin_count],
            sketch: Kll::new(k),
        }
    }

    /// Adds a value; `edges` and `range` are the reference's bin edges and [min, max].
    pub fn update(&mut self, x: f64, edges: &[f64], range: Option<(f64, f64)>) {
        if !x.is_finite() {
            self.missing += 1;
            return;
        }
        self.moments.update(x);
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
        if let Some((lo, hi)) = range {
            if x < lo || x > hi {
                self.out_of_range += 1;
            }
        }
        if let Some(b) = self.bins.get_mut(bin_of(edges, x)) {
            *b += 1;
        }
        self.sketch.update(x);
    }

    pub fn merge(&mut self, o: &NumericSummary) {
        self.moments.merge(&o.moments);
        self.missing += o.missing;
        self.min = [self.min, o.min].into_iter().flatten().reduce(f64::min);
        self.max = [self.max, o.max].into_iter().flatten().reduce(f64::max);
        self.out_of_range += o.out_of_range;
        for (a, b) in self.bins.iter_mut().zip(&o.bins) {
            *a += b;
        }
        self.sketch.merge(&o.sketch);
    }

    /// Values seen, missing ones included.
    pub fn total(&self) -> u64 {
        self.moments.count + self.missing
    }

    pub fn missing_rate(&self) -> f64 {
        ratio(self.missing, self.total())
    }

    pub fn out_of_range_rate(&self) -> f64 {
        ratio(self.out_of_range, self.moments.count)
    }
}

/// One categorical column: counts per category, the rarest folded into `other` beyond `cap`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CategoricalSummary {
    pub counts: BTreeMap<String, u64>,
    /// Values of categories not kept (beyond `cap` distinct ones).
    pub other: u64,
    pub missing: u64,
    /// Values of categories the reference never saw (windows only).
    pub new: u64,
}

/// Most distinct categories a summary keeps.
pub const CATEGORY_CAP: usize = 1000;

impl CategoricalSummary {
    pub fn update(&mut self, value: Option<&str>, reference: Option<&CategoricalSummary>) {
        let Some(v) = value else {
            self.missing += 1;
            return;
        };
        if reference.is_some_and(|r| !r.counts.contains_key(v)) {
            self.new += 1;
        }
        if let Some(c) = self.counts.get_mut(v) {
            *c += 1;
        } else if self.counts.len() < CATEGORY_CAP {
            self.counts.insert(v.to_string(), 1);
        } else {
            self.other += 1;
        }
    }

    pub fn merge(&mut self, o: &CategoricalSummary) {
        for (k, v) in &o.counts {
            if let Some(c) = self.counts.get_mut(k) {
                *c += v;
            } else if self.counts.len() < CATEGORY_CAP {
                self.counts.insert(k.clone(), *v);
            } else {
                self.other += v;
            }
        }
        self.other += o.other;
        self.missing += o.missing;
        self.new += o.new;
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.other + self.missing
    }

    /// The `n` most frequent categories with their counts, most frequent first (ties by name).
    pub fn top(&self, n: usize) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self.counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(n);
        all
    }

    pub fn missing_rate(&self) -> f64 {
        ratio(self.missing, self.total())
    }

    pub fn new_rate(&self) -> f64 {
        ratio(self.new, self.total() - self.missing)
    }

    /// Counts of `self` and `other` over the same categories: the reference's, then each
    /// category only `other` has, then `other`'s folded remainder.
    pub fn aligned(&self, window: &CategoricalSummary) -> (Vec<u64>, Vec<u64>) {
        let mut r = Vec::new();
        let mut w = Vec::new();
        for (k, v) in &self.counts {
            r.push(*v);
            w.push(window.counts.get(k).copied().unwrap_or(0));
        }
        for (k, v) in &window.counts {
            if !self.counts.contains_key(k) {
                r.push(0);
                w.push(*v);
            }
        }
        r.push(self.other);
        w.push(window.other);
        (r, w)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
