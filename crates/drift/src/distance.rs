//! Distances between a reference distribution and a window, defined as the references are:
//! `scipy.stats.ks_2samp` (statistic), `scipy.stats.wasserstein_distance`,
//! `scipy.spatial.distance.jensenshannon(base=2)`, and the population stability index.
//!
//! Continuous distances work on [`Sample`]s: sorted values with weights. Raw data is a sample
//! with weight 1 per value (then they equal scipy's to rounding); a KLL sketch is the sample of
//! its retained items with their weights (then they are within the sketch's rank error).

/// Proportions below this count as this in PSI, so an empty bin gives a large but finite term.
pub const PSI_EPSILON: f64 = 1e-4;

/// Sorted values with cumulative weights.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    values: Vec<f64>,
    /// `cum[i]` = total weight of `values[..=i]`.
    cum: Vec<f64>,
}

impl Sample {
    /// Raw observations (NaN dropped), each of weight 1.
    pub fn exact(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let cum = (1..=v.len()).map(|i| i as f64).collect();
        Self { values: v, cum }
    }

    /// Items sorted by value with their weights (a sketch's [`crate::kll::Kll::weighted`]).
    pub fn weighted(items: &[(f64, u64)]) -> Self {
        let mut total = 0.0;
        let mut values = Vec::with_capacity(items.len());
        let mut cum = Vec::with_capacity(items.len());
        for &(x, w) in items {
            total += w as f64;
            values.push(x);
            cum.push(total);
        }
        Self { values, cum }
    }

    pub fn total(&self) -> f64 {
        self.cum.last().copied().unwrap_or(0.0)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// P(X ≤ x).
    pub fn cdf(&self, x: f64) -> f64 {
        let i = self.values.partition_point(|v| *v <= x);
        if i == 0 {
            0.0
        } else {
            self.cum[i - 1] / self.total()
        }
    }
}

/// Two-sample Kolmogorov–Smirnov statistic: the largest gap between the two CDFs.
pub fn ks(a: &Sample, b: &Sample) -> Option<f64> {
    ks_and_wasserstein(a, b).map(|(d, _)| d)
}

/// Wasserstein-1 (earth mover's) distance: the area between the two CDFs.
pub fn wasserstein(a: &Sample, b: &Sample) -> Option<f64> {
    ks_and_wasserstein(a, b).map(|(_, w)| w)
}

/// KS D and Wasserstein-1 together, in one merge of the two sorted samples: at each distinct
/// value x of either (ascending) the CDF gap |A(x) − B(x)| is a KS candidate, and it holds on
/// [x, next value), which adds gap × width to the area. O(n + m), no allocation.
pub fn ks_and_wasserstein(a: &Sample, b: &Sample) -> Option<(f64, f64)> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (ta, tb) = (a.total(), b.total());
    let (mut i, mut j) = (0, 0);
    let (mut d, mut area) = (0.0f64, 0.0f64);
    let mut last: Option<(f64, f64)> = None; // (previous support value, the gap from it on)
    loop {
        let x = match (a.values.get(i), b.values.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) | (None, Some(&x)) => x,
            (None, None) => break,
        };
        while a.values.get(i).is_some_and(|v| *v <= x) {
            i += 1;
        }
        while b.values.get(j).is_some_and(|v| *v <= x) {
            j += 1;
        }
        let fa = if i == 0 { 0.0 } else { a.cum[i - 1] / ta };
        let fb = if j == 0 { 0.0 } else { b.cum[j - 1] / tb };
        let gap = (fa - fb).abs();
        if let Some((p, g)) = last {
            area += g * (x - p);
        }
        d = d.max(gap);
        last = Some((x, gap));
    }
    Some((d, area))
}

/// Which bin `x` falls in, given ascending inner edges: bin `i` is `(edges[i-1], edges[i]]`,
/// the first `(-inf, edges[0]]`, the last `(edges[last], +inf)` (numpy's `searchsorted(side="left")`).
pub fn bin_of(edges: &[f64], x: f64) -> usize {
    edges.partition_point(|e| *e < x)
}

/// Population stability index of `actual` against `expected` counts (same bins):
/// `Σ (a − e) · ln(a / e)` over proportions, each proportion at least [`PSI_EPSILON`].
pub fn psi(expected: &[u64], actual: &[u64]) -> Option<f64> {
    let (te, ta) = (expected.iter().sum::<u64>() as f64, actual.iter().sum::<u64>() as f64);
    if te == 0.0 || ta == 0.0 {
        return None;
    }
    let sum = expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let e = (e as f64 / te).max(PSI_EPSILON);
            let a = (a as f64 / ta).max(PSI_EPSILON);
            (a - e) * (a / e).ln()
        })
        .sum();
    Some(sum)
}

/// Jensen–Shannon distance, base 2 (in [0, 1]), between two histograms over the same bins.
pub fn jensen_shannon(p: &[u64], q: &[u64]) -> Option<f64> {
    let (tp, tq) = (p.iter().sum::<u64>() as f64, q.iter().sum::<u64>() as f64);
    if tp == 0.0 || tq == 0.0 {
        return None;
    }
    let rel = |x: f64, m: f64| if x > 0.0 { x * (x / m).ln() } else { 0.0 };
    let mut div = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a as f64 / tp, b as f64 / tq);
        let m = (a + b) / 2.0;
        div += rel(a, m) + rel(b, m);
    }
    Some((div / 2.0 / std::f64::consts::LN_2).max(0.0).sqrt())
}

/// Inner decile edges of `sorted` data (numpy's default linear quantiles at 0.1 … 0.9),
/// duplicates removed (a feature with few distinct values gets fewer bins).
pub fn decile_edges(sorted: &[f64]) -> Vec<f64> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let mut edges: Vec<f64> = (1..10).map(|i| linear_quantile(sorted, f64::from(i) / 10.0)).collect();
    edges.dedup();
    edges
}

/// numpy's `quantile(method="linear")` of sorted data.
pub fn linear_quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}
