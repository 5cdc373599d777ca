//! Text models: a Hugging Face `tokenizer.json` plus an ONNX encoder
//! (`model.onnx`), served as strings in, embeddings or logits out.
//!
//! ## Layout (along the request path)
//! - [`TextBackend`] recognises a version folder holding `model.onnx` with a
//!   `tokenizer.json` beside it or in the model folder (or a config naming
//!   `backend: "text"`), completes the configuration and loads the encoder
//!   through whichever ONNX backend the server selected.
//! - [`encode`]: BYTES → UTF-8 strings → token ids, padded per batch, with an attention mask.
//! - [`encoder`]: which encoder inputs get ids / mask / type ids, and which output is read.
//! - [`pool`]: mean or `[CLS]` pooling over the mask, L2 normalisation.
//! - [`engine`]: the [`flotilla_core::engine::Engine`] that chains them on an engine thread.
//! - [`options`]: the config `parameters` (`max_length`, `pooling`, `normalize`, `encoder_output`).
//!
//! A completed configuration has one input `TEXT` (TYPE_STRING, dims `[1]`, one
//! string per row), one output `embedding` (TYPE_FP32, `[hidden]`) or, with
//! `pooling: none`, `logits` (`[classes]`, usable with `label_filename` and the
//! classification extension), and `max_batch_size` [`DEFAULT_MAX_BATCH_SIZE`].
#![forbid(unsafe_code)]

pub mod encode;
pub mod encoder;
pub mod engine;
pub mod options;
pub mod pool;

use encode::TextTokenizer;
use encoder::{inner_config, EncoderPlan};
use engine::TextEngine;
use flotilla_core::config::{input_datatype, output_datatype};
use flotilla_core::engine::{AutocompleteOptions, Backend, Engine};
use flotilla_core::{DataType, Error, ModelConfig, Result};
use flotilla_proto::inference::{ModelInput, ModelOutput};
use options::TextOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The tokenizer file looked for beside the model file, then in the model folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// max_batch_size of a completed text configuration (strings are small; encoders batch well).
pub const DEFAULT_MAX_BATCH_SIZE: i32 = 64;

/// Loads text models; the ONNX encoder goes through `onnx`.
pub struct TextBackend {
    onnx: Arc<dyn Backend>,
}

/// `tokenizer.json` for a model file: in its version folder, else in the model folder.
pub fn tokenizer_file(model_file: &Path) -> Option<PathBuf> {
    let version_dir = model_file.parent()?;
    [Some(version_dir), version_dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(TOKENIZER_FILE))
        .find(|p| p.is_file())
}

// === impl TextBackend ===

impl TextBackend {
    /// Wraps the ONNX backend the server selected (ONNX Runtime or tract).
    pub fn new(onnx: Arc<dyn Backend>) -> Self {
        Self { onnx }
    }

    fn tokenizer(&self, model_file: &Path, options: &TextOptions) -> Result<TextTokenizer> {
        let file = tokenizer_file(model_file).ok_or_else(|| {
            Error::invalid(format!(
                "{}: no {TOKENIZER_FILE} beside the model file or in the model folder",
                model_file.display()
            ))
        })?;
        TextTokenizer::from_file(&file, options.max_length)
    }
}

impl Backend for TextBackend {
    fn name(&self) -> &'static str {
        "text"
    }

    fn platform(&self) -> &'static str {
        "flotilla_text"
    }

    fn serves(&self, config: &ModelConfig) -> bool {
        config.backend == "text" || config.platform == "flotilla_text"
    }

    fn default_filenames(&self) -> &'static [&'static str] {
        &["model.onnx"]
    }

    fn recognises(&self, version_dir: &Path) -> bool {
        let file = version_dir.join("model.onnx");
        file.is_file() && tokenizer_file(&file).is_some()
    }

    fn autocomplete(&self, config: &mut ModelConfig, model_file: &Path, _: &AutocompleteOptions) -> Result<()> {
        let options = TextOptions::from_config(config)?;
        self.tokenizer(model_file, &options)?;
        let inner = inner_config(config, self.onnx.as_ref(), model_file)?;
        let plan = EncoderPlan::new(&inner, &options, model_file)?;
        if config.max_batch_size == 0 && config.input.is_empty() && config.output.is_empty() {
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE;
        }
        let batched = config.max_batch_size > 0;
        if config.input.is_empty() {
            config.input = vec![ModelInput {
                name: "TEXT".into(),
                data_type: DataType::Bytes.to_config() as i32,
                dims: if batched { vec![1] } else { vec![-1] },
                ..Default::default()
            }];
        }
        if config.output.is_empty() {
            let width = plan.row_width();
            config.output = vec![ModelOutput {
                name: options.pooling.output_name().into(),
                data_type: DataType::F32.to_config() as i32,
                dims: if batched { vec![width] } else { vec![-1, width] },
                ..Default::default()
            }];
        }
        Ok(())
    }

    fn load(&self, config: &ModelConfig, model_file: &Path) -> Result<Arc<dyn Engine>> {
        let err = |m: String| Error::invalid(format!("{}: {m}", config.name));
        let options = TextOptions::from_config(config)?;
        let [input] = config.input.as_slice() else {
            return Err(err(format!("a text model has one BYTES input, the config declares {}", config.input.len())));
        };
        if input_datatype(input) != DataType::Bytes {
            return Err(err(format!("input '{}' must be TYPE_STRING (one string per row)", input.name)));
        }
        let [output] = config.output.as_slice() else {
            return Err(err(format!("a text model has one FP32 output, the config declares {}", config.output.len())));
        };
        if output_datatype(output) != DataType::F32 {
            return Err(err(format!("output '{}' must be TYPE_FP32", output.name)));
        }
        let tokenizer = self.tokenizer(model_file, &options)?;
        let inner = inner_config(config, self.onnx.as_ref(), model_file)?;
        let plan = EncoderPlan::new(&inner, &options, model_file)?;
        let encoder = self.onnx.load(&inner, model_file)?;
        tracing::info!(
            model = %config.name,
            max_length = tokenizer.max_length(),
            pooling = ?options.pooling,
            normalize = options.normalize,
            encoder_output = %plan.output,
            encoder_runtime = self.onnx.runtime(),
            "text model"
        );
        Ok(Arc::new(TextEngine {
            tokenizer,
            encoder,
            plan,
            pooling: options.pooling,
            normalize: options.normalize,
            output: output.name.clone(),
        }))
    }
}

#[cfg(test)]
mod tests;
