//! A model's reference profile: what its inputs and outputs looked like in training. Written as
//! JSON into the model's folder (`drift_profile.json`); see `FORMAT` and `VERSION`.

use crate::distance::{decile_edges, Sample};
use crate::kll::DEFAULT_K;
use crate::pca::Pca;
use crate::summary::{CategoricalSummary, NumericSummary};
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "flotilla-drift-profile";
/// Bumped on any incompatible change; readers refuse other versions with a clear error.
pub const VERSION: u32 = 1;
pub const FILE_NAME: &str = "drift_profile.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    pub format: String,
    pub version: u32,
    pub model: String,
    /// Where the reference data came from (a path), for people reading the file.
    pub source: String,
    /// RFC 3339 time the profile was built.
    pub created: String,
    pub rows: u64,
    /// Which model inputs carry the features: each tensor's columns (a 2-D `[batch, columns]`
    /// tensor, or 1-D for one column), in the order of `features`.
    pub inputs: Vec<TensorColumns>,
    pub features: Vec<Column>,
    /// Which model outputs are profiled, the same way, in the order of `outputs`.
    #[serde(default)]
    pub output_tensors: Vec<TensorColumns>,
    /// The model's outputs on the reference data (prediction drift).
    #[serde(default)]
    pub outputs: Vec<Column>,
    /// Numeric features together (absent with fewer than two numeric features).
    #[serde(default)]
    pub multivariate: Option<Multivariate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorColumns {
    pub tensor: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Multivariate {
    /// The numeric features, in the order the PCA expects them.
    pub features: Vec<String>,
    pub pca: Pca,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(flatten)]
    pub kind: ColumnKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnKind {
    Numeric(NumericReference),
    Categorical(CategoricalSummary),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NumericReference {
    /// Inner edges of the reference deciles (≤ 9, duplicates removed): the PSI / JS bins.
    pub bin_edges: Vec<f64>,
    pub summary: NumericSummary,
    #[serde(skip)]
    sample: std::sync::OnceLock<Sample>,
}

impl NumericReference {
    /// The reference of one numeric column (NaN and infinities count as missing).
    pub fn build(values: &[f64], k: u16) -> Self {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let bin_edges = decile_edges(&sorted);
        let mut summary = NumericSummary::new(bin_edges.len() + 1, k);
        for &x in values {
            summary.update(x, &bin_edges, None);
        }
        Self { bin_edges, summary, sample: std::sync::OnceLock::new() }
    }

    /// [min, max] seen in the reference (None when it held no value).
    pub fn range(&self) -> Option<(f64, f64)> {
        self.summary.min.zip(self.summary.max)
    }

    /// An empty window summary shaped like this reference.
    pub fn new_window(&self) -> NumericSummary {
        NumericSummary::new(self.bin_edges.len() + 1, self.summary.sketch.k())
    }

    /// The reference sketch as a sorted weighted sample, built once (every window is compared with it).
    pub fn sample(&self) -> &Sample {
        self.sample.get_or_init(|| Sample::weighted(&self.summary.sketch.weighted()))
    }
}

/// Reference data of one column, as the profile builder reads it.
pub enum Data {
    Numeric(Vec<f64>),
    Categorical(Vec<Option<String>>),
}

impl Column {
    pub fn build(name: &str, data: &Data, k: u16) -> Column {
        let kind = match data {
            Data::Numeric(values) => ColumnKind::Numeric(NumericReference::build(values, k)),
            Data::Categorical(values) => {
                let mut c = CategoricalSummary::default();
                for v in values {
                    c.update(v.as_deref(), None);
                }
                ColumnKind::Categorical(c)
            }
        };
        Column { name: name.to_string(), kind }
    }
}

impl Profile {
    /// Builds a profile from named feature columns and the model's outputs on them; `inputs`
    /// and `output_tensors` say which tensors carry them (their columns, concatenated, are
    /// `features` and `outputs` in order).
    pub fn build(
        model: &str,
        source: &str,
        created: &str,
        (inputs, features): (Vec<TensorColumns>, &[(String, Data)]),
        (output_tensors, outputs): (Vec<TensorColumns>, &[(String, Data)]),
    ) -> Profile {
        let k = DEFAULT_K;
        let rows = features.first().map_or(0, |(_, d)| match d {
            Data::Numeric(v) => v.len(),
            Data::Categorical(v) => v.len(),
        }) as u64;
        let numeric: Vec<(String, Vec<f64>)> = features
            .iter()
            .filter_map(|(n, d)| match d {
                Data::Numeric(v) => Some((n.clone(), v.clone())),
                Data::Categorical(_) => None,
            })
            .collect();
        let columns: Vec<Vec<f64>> = numeric.iter().map(|(_, v)| v.clone()).collect();
        let multivariate = Pca::fit(&columns, crate::pca::DEFAULT_VARIANCE)
            .map(|pca| Multivariate { features: numeric.iter().map(|(n, _)| n.clone()).collect(), pca });
        Profile {
            format: FORMAT.into(),
            version: VERSION,
            model: model.into(),
            source: source.into(),
            created: created.into(),
            rows,
            inputs,
            features: features.iter().map(|(n, d)| Column::build(n, d, k)).collect(),
            output_tensors,
            outputs: outputs.iter().map(|(n, d)| Column::build(n, d, k)).collect(),
            multivariate,
        }
    }

    pub fn from_json(text: &str) -> Result<Profile, String> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let header: Header = serde_json::from_str(text).map_err(|e| format!("not a drift profile: {e}"))?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(format!("not a drift profile: format is {:?}, expected {FORMAT:?}", header.format));
        }
        if header.version != Some(VERSION) {
            return Err(format!(
                "drift profile version {:?} is not supported by this build (it reads version {VERSION}); rebuild it with `flotilla profile`",
                header.version
            ));
        }
        let p: Profile = serde_json::from_str(text).map_err(|e| format!("drift profile: {e}"))?;
        let width = |t: &[TensorColumns]| t.iter().map(|t| t.columns.len()).sum::<usize>();
        if width(&p.inputs) != p.features.len() || width(&p.output_tensors) != p.outputs.len() {
            return Err("drift profile: the tensors' columns do not match the profiled features and outputs".into());
        }
        Ok(p)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
