//! Tree-ensemble engine (pure Rust, always built): XGBoost JSON/UBJSON and
//! LightGBM text models, exact to the libraries' own predictions and faster.
//!
//! Layout:
//! - [`xgboost`], [`lightgbm`] (and [`ubjson`]): model files → [`forest::Forest`],
//!   a library-neutral form with normalised split rules.
//! - [`objective`]: margins → predictions (sigmoid, softmax, exp, ...) and classes.
//! - [`predict`]: the forest compiled for speed (complete branch-free layout or
//!   general traversal), margins for a batch of rows.
//! - [`cores`]: the cores large batches share, so one batch uses those others leave idle.
//! - [`engine`]: the [`Engine`](flotilla_core::engine::Engine) over it: config
//!   parameters, input checks, outputs.
//! - [`TreeBackend`]: recognises the files (Triton FIL's `backend: "fil"` with
//!   `model_type`, or by file name with no config) and completes configurations.
#![forbid(unsafe_code)]

pub mod cores;
pub mod engine;
pub mod forest;
pub mod lightgbm;
pub mod objective;
pub mod predict;
pub mod ubjson;
pub mod xgboost;

use flotilla_core::engine::{AutocompleteOptions, Backend, Engine};
use flotilla_core::{DataType, Error, ModelConfig, Result};
use flotilla_proto::inference::{ModelInput, ModelOutput};
use forest::Forest;
use objective::Classes;
use std::path::Path;
use std::sync::Arc;

pub use engine::TreeEngine;

/// Largest batch given to tree models whose configuration sets none: trees are
/// cheap per row and clients send thousands of rows at once.
pub const DEFAULT_MAX_BATCH_SIZE: i32 = 8192;

/// Model file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    XgboostJson,
    XgboostUbj,
    Lightgbm,
}

/// Reads and parses a model file. The format comes from FIL's `model_type`
/// parameter when given, else from the file's contents.
pub fn load_forest(file: &Path, model_type: Option<&str>) -> Result<Forest> {
    let bytes =
        std::fs::read(file).map_err(|e| Error::invalid(format!("{}: cannot read model file: {e}", file.display())))?;
    let bad = |m: String| Error::invalid(format!("{}: {m}", file.display()));
    let format = match model_type {
        Some("xgboost_json") => Format::XgboostJson,
        Some("xgboost_ubj") => Format::XgboostUbj,
        Some("lightgbm") => Format::Lightgbm,
        Some("xgboost") => {
            return Err(bad("the legacy binary XGBoost format is not supported; save the model as JSON \
                            (save_model(\"model.json\")) or UBJSON and use model_type xgboost_json"
                .into()))
        }
        Some(other) => {
            return Err(bad(format!(
                "unsupported model_type '{other}' (expected xgboost_json, xgboost_ubj or lightgbm)"
            )))
        }
        None => sniff(&bytes).ok_or_else(|| {
            bad("not a recognised tree model (expected XGBoost JSON/UBJSON or a LightGBM text model)".into())
        })?,
    };
    let forest = match format {
        Format::XgboostJson | Format::XgboostUbj => xgboost::parse(&bytes),
        Format::Lightgbm => {
            let text = std::str::from_utf8(&bytes).map_err(|_| "the LightGBM model is not UTF-8 text".to_string());
            text.and_then(lightgbm::parse)
        }
    };
    forest.map_err(|e| bad(format!("cannot load {} model: {e}", library(format))))
}

fn library(f: Format) -> &'static str {
    match f {
        Format::Lightgbm => "LightGBM",
        _ => "XGBoost",
    }
}

fn sniff(bytes: &[u8]) -> Option<Format> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &bytes[start..];
    if rest.starts_with(b"tree\n") || rest.starts_with(b"tree\r\n") {
        Some(Format::Lightgbm)
    } else if rest.starts_with(b"{") {
        // JSON and UBJSON objects both open with `{`; the parser tells them apart.
        Some(Format::XgboostJson)
    } else {
        None
    }
}

/// Serves tree models.
#[derive(Debug, Default, Clone, Copy)]
pub struct TreeBackend;

fn model_type(config: &ModelConfig) -> Option<&str> {
    config.parameters.get("model_type").map(|p| p.string_value.trim()).filter(|s| !s.is_empty())
}

impl Backend for TreeBackend {
    fn name(&self) -> &'static str {
        "fil"
    }

    fn platform(&self) -> &'static str {
        ""
    }

    fn serves(&self, config: &ModelConfig) -> bool {
        matches!(config.backend.as_str(), "fil" | "trees" | "xgboost" | "lightgbm")
            || matches!(config.platform.as_str(), "xgboost" | "lightgbm")
    }

    fn default_filenames(&self) -> &'static [&'static str] {
        &["model.json", "model.ubj", "model.txt", "xgboost.json", "xgboost.ubj", "lightgbm.txt"]
    }

    fn recognises(&self, version_dir: &Path) -> bool {
        self.default_filenames().iter().map(|f| version_dir.join(f)).any(|p| {
            let head = std::fs::File::open(&p).ok().and_then(|f| {
                use std::io::Read;
                let mut buf = [0u8; 64];
                let n = f.take(64).read(&mut buf).ok()?;
                Some(buf[..n].to_vec())
            });
            head.is_some_and(|h| sniff(&h).is_some())
        })
    }

    fn autocomplete(&self, config: &mut ModelConfig, model_file: &Path, _: &AutocompleteOptions) -> Result<()> {
        let forest = load_forest(model_file, model_type(config))?;
        if config.max_batch_size == 0 && config.input.is_empty() {
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE;
        }
        let batched = config.max_batch_size > 0;
        if config.input.is_empty() {
            let mut dims = vec![forest.num_features as i64];
            if !batched {
                dims.insert(0, -1);
            }
            config.input = vec![ModelInput {
                name: "input__0".into(),
                data_type: DataType::F32.to_config() as i32,
                dims,
                ..Default::default()
            }];
        }
        if config.output.is_empty() {
            let margin = config.parameters.get("output_margin").is_some_and(|p| p.string_value.trim() == "true");
            let width = if margin { forest.num_groups } else { forest.objective.output_width(forest.num_groups) };
            let out = |name: &str, dt: DataType, w: usize| {
                let mut dims = vec![w as i64];
                if !batched {
                    dims.insert(0, -1);
                }
                ModelOutput { name: name.into(), data_type: dt.to_config() as i32, dims, ..Default::default() }
            };
            config.output.push(out("output__0", DataType::F32, width));
            if forest.objective.classes != Classes::None {
                config.output.push(out("class_index", DataType::I64, 1));
            }
        }
        Ok(())
    }

    fn load(&self, config: &ModelConfig, model_file: &Path) -> Result<Arc<dyn Engine>> {
        let forest = load_forest(model_file, model_type(config))?;
        Ok(Arc::new(TreeEngine::new(config, forest, model_file)?))
    }
}

#[cfg(test)]
mod tests;
