//! Multivariate drift as NannyML checks it: standardise the features, keep the principal
//! components that explain a share of the reference's variance (65% by default), and measure
//! how badly a row is rebuilt from them. A change in how features move together (a correlated
//! shift that leaves every marginal unchanged) raises the reconstruction error.

// Matrix arithmetic reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use serde::{Deserialize, Serialize};

/// Share of the reference's variance the kept components explain.
pub const DEFAULT_VARIANCE: f64 = 0.65;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pca {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Kept components, each of the features' length, orthonormal.
    pub components: Vec<Vec<f64>>,
    /// Share of the variance they explain.
    pub explained: f64,
    /// Reconstruction error over the reference rows: mean and standard deviation.
    pub error_mean: f64,
    pub error_std: f64,
}

impl Pca {
    /// Fits on `columns` (one Vec per feature, equal lengths; NaN is replaced by the mean).
    pub fn fit(columns: &[Vec<f64>], variance: f64) -> Option<Pca> {
        let d = columns.len();
        let n = columns.first().map_or(0, Vec::len);
        if d < 2 || n < 2 {
            return None;
        }
        let mut mean = Vec::with_capacity(d);
        let mut std = Vec::with_capacity(d);
        for c in columns {
            let vals: Vec<f64> = c.iter().copied().filter(|x| !x.is_nan()).collect();
            let m = if vals.is_empty() { 0.0 } else { vals.iter().sum::<f64>() / vals.len() as f64 };
            let s = if vals.is_empty() {
                0.0
            } else {
                (vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / vals.len() as f64).sqrt()
            };
            mean.push(m);
            std.push(if s > 0.0 { s } else { 1.0 });
        }
        let z = |j: usize, i: usize| {
            let x = columns[j][i];
            if x.is_nan() {
                0.0
            } else {
                (x - mean[j]) / std[j]
            }
        };
        let mut cov = vec![vec![0.0; d]; d];
        for i in 0..n {
            let row: Vec<f64> = (0..d).map(|j| z(j, i)).collect();
            for a in 0..d {
                for b in a..d {
                    cov[a][b] += row[a] * row[b];
                }
            }
        }
        for a in 0..d {
            for b in a..d {
                cov[a][b] /= n as f64;
                cov[b][a] = cov[a][b];
            }
        }
        let (values, vectors) = jacobi_eigen(cov);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let total: f64 = values.iter().map(|v| v.max(0.0)).sum();
        let mut components = Vec::new();
        let mut explained = 0.0;
        for &i in &order {
            if total <= 0.0 || explained >= variance {
                break;
            }
            explained += values[i].max(0.0) / total;
            components.push((0..d).map(|r| vectors[r][i]).collect());
        }
        let mut pca = Pca { mean, std, components, explained, error_mean: 0.0, error_std: 0.0 };
        let mut moments = crate::summary::Moments::default();
        let mut row = vec![0.0; d];
        for i in 0..n {
            for (j, c) in columns.iter().enumerate() {
                row[j] = c[i];
            }
            moments.update(pca.error(&row));
        }
        pca.error_mean = moments.mean;
        pca.error_std = moments.std();
        Some(pca)
    }

    /// Euclidean distance between the standardised row and its reconstruction.
    pub fn error(&self, row: &[f64]) -> f64 {
        let z: Vec<f64> = row
            .iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(x, (m, s))| if x.is_nan() { 0.0 } else { (x - m) / s })
            .collect();
        let mut rebuilt = vec![0.0; z.len()];
        for c in &self.components {
            let score: f64 = c.iter().zip(&z).map(|(a, b)| a * b).sum();
            for (r, a) in rebuilt.iter_mut().zip(c) {
                *r += score * a;
            }
        }
        z.iter().zip(&rebuilt).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt()
    }
}

/// Eigenvalues and eigenvectors (columns of the second) of a symmetric matrix, cyclic Jacobi.
fn jacobi_eigen(mut a: Vec<Vec<f64>>) -> (Vec<f64>, Vec<Vec<f64>>) {
    let d = a.len();
    let mut v: Vec<Vec<f64>> = (0..d).map(|i| (0..d).map(|j| f64::from(u8::from(i == j))).collect()).collect();
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i][j] * a[i][j])
            .sum();
        let diag: f64 = (0..d).map(|i| a[i][i] * a[i][i]).sum();
        if off <= 1e-22 * diag.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                if a[p][q].abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q][q] - a[p][p]) / (2.0 * a[p][q]);
                // the smaller root of t² + 2θt − 1 = 0 (signum(0.0) is 1: θ = 0 gives t = 1)
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k][p], a[k][q]);
                    a[k][p] = c * akp - s * akq;
                    a[k][q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p][k], a[q][k]);
                    a[p][k] = c * apk - s * aqk;
                    a[q][k] = s * apk + c * aqk;
                }
                for row in v.iter_mut() {
                    let (vkp, vkq) = (row[p], row[q]);
                    row[p] = c * vkp - s * vkq;
                    row[q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i][i]).collect(), v)
}
