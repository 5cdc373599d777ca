//! Drift monitoring: how far a model's live inputs and outputs have moved from its training data.
//!
//! Layout:
//! - [`kll`]: the KLL quantile sketch (mergeable, bounded memory, known rank error).
//! - [`summary`]: mergeable per-column summaries (moments, extremes, bins, sketch, categories);
//!   the reference and every window hold the same ones.
//! - [`distance`]: KS, Wasserstein-1, PSI, Jensen–Shannon, defined as scipy / numpy define them.
//! - [`pca`]: multivariate drift, PCA reconstruction error (NannyML's method).
//! - [`profile`]: the reference profile written into a model's folder (versioned JSON).
//! - [`compare`]: one window against the reference: every metric of every column.
//! - [`monitor`]: the online side: the serving path's observer, windows, alerts, webhooks.

pub mod compare;
pub mod distance;
pub mod kll;
pub mod monitor;
pub mod pca;
pub mod profile;
pub mod summary;

#[cfg(test)]
mod tests;
