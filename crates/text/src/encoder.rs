//! The ONNX encoder behind a text model: its configuration (completed by the
//! ONNX backend the server selected), which of its inputs get token ids,
//! attention mask and token type ids, and which output is read.
//!
//! Inputs are matched by name: `input_ids` (required), `attention_mask` and
//! `token_type_ids` (optional; the tokenizer's type ids, zeros for one sentence), INT64
//! or INT32. The output is the `encoder_output` parameter if set, else for
//! `mean`/`cls` pooling `last_hidden_state` or `token_embeddings` or the first
//! FP32 output of rank 3 (`[batch, tokens, hidden]`), and for `none` `logits`
//! or the first FP32 output of rank 2 (`[batch, classes]`).

use crate::encode::TokenBatch;
use crate::options::{Pooling, TextOptions};
use flotilla_core::config::{input_datatype, output_datatype};
use flotilla_core::engine::{AutocompleteOptions, Backend};
use flotilla_core::{DataType, Error, ModelConfig, Result, Tensor};
use std::path::Path;

/// One integer input of the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub datatype: DataType,
}

/// How a text engine feeds and reads its encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderPlan {
    pub ids: Slot,
    pub mask: Option<Slot>,
    pub type_ids: Option<Slot>,
    /// The output read, and its full dims (`-1` where variable).
    pub output: String,
    pub output_dims: Vec<i64>,
}

/// The encoder's configuration as the ONNX backend completes it from `model_file`, unbatched
/// (full dims, so any batch size and sequence length the graph allows are accepted).
pub fn inner_config(outer: &ModelConfig, onnx: &dyn Backend, model_file: &Path) -> Result<ModelConfig> {
    let mut inner = ModelConfig {
        name: outer.name.clone(),
        platform: onnx.platform().to_string(),
        backend: onnx.name().to_string(),
        instance_group: outer.instance_group.clone(),
        optimization: outer.optimization.clone(),
        parameters: outer.parameters.clone(),
        ..Default::default()
    };
    onnx.autocomplete(&mut inner, model_file, &AutocompleteOptions { default_max_batch_size: 0 })?;
    flotilla_core::config::validate(&mut inner, &format!("{} (ONNX encoder)", outer.name))?;
    Ok(inner)
}

// === impl EncoderPlan ===

impl EncoderPlan {
    pub fn new(inner: &ModelConfig, options: &TextOptions, file: &Path) -> Result<Self> {
        let err = |m: String| Error::invalid(format!("{}: {m}", file.display()));
        let mut ids = None;
        let mut mask = None;
        let mut type_ids = None;
        for input in &inner.input {
            let slot = match input.name.as_str() {
                "input_ids" => &mut ids,
                "attention_mask" => &mut mask,
                "token_type_ids" => &mut type_ids,
                other => {
                    return Err(err(format!(
                        "encoder input '{other}' is not one a text model fills \
                         (input_ids, attention_mask, token_type_ids)"
                    )))
                }
            };
            let datatype = input_datatype(input);
            if !matches!(datatype, DataType::I64 | DataType::I32) {
                return Err(err(format!("encoder input '{}' is {datatype}; INT64 or INT32 expected", input.name)));
            }
            *slot = Some(Slot { name: input.name.clone(), datatype });
        }
        let ids = ids.ok_or_else(|| err("the ONNX encoder has no input named 'input_ids'".into()))?;

        let rank = if options.pooling == Pooling::None { 2 } else { 3 };
        let preferred: &[&str] =
            if options.pooling == Pooling::None { &["logits"] } else { &["last_hidden_state", "token_embeddings"] };
        let fits = |o: &&flotilla_proto::inference::ModelOutput| {
            output_datatype(o) == DataType::F32 && (o.dims.len() == rank || o.dims.is_empty())
        };
        let output = match &options.encoder_output {
            Some(name) => inner.output.iter().find(|o| &o.name == name).ok_or_else(|| {
                err(format!(
                    "encoder_output '{name}' is not an output of the ONNX graph (outputs: {})",
                    inner.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
                ))
            })?,
            None => preferred
                .iter()
                .find_map(|n| inner.output.iter().find(|o| o.name == *n))
                .or_else(|| inner.output.iter().find(|o| fits(o) && !o.dims.is_empty()))
                .ok_or_else(|| {
                    err(format!(
                        "no FP32 encoder output of rank {rank} for pooling '{}'; name one with parameter encoder_output",
                        options.pooling.output_name()
                    ))
                })?,
        };
        if !fits(&output) {
            return Err(err(format!(
                "encoder output '{}' is {} with dims {:?}; pooling needs FP32 of rank {rank}",
                output.name,
                output_datatype(output),
                output.dims
            )));
        }
        Ok(Self { ids, mask, type_ids, output: output.name.clone(), output_dims: output.dims.clone() })
    }

    /// Width of one output row: the hidden size (pooling) or class count (`none`), `-1` if variable.
    pub fn row_width(&self) -> i64 {
        self.output_dims.last().copied().unwrap_or(-1)
    }

    /// The encoder's input tensors for a tokenized batch.
    pub fn inputs(&self, batch: &TokenBatch) -> Vec<Tensor> {
        let shape = vec![batch.rows as i64, batch.len as i64];
        let tensor = |slot: &Slot, values: &[i64]| {
            let data: Vec<u8> = match slot.datatype {
                DataType::I32 => values.iter().flat_map(|v| (*v as i32).to_le_bytes()).collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            };
            Tensor::new(slot.name.clone(), slot.datatype, shape.clone(), data)
        };
        let mut out = vec![tensor(&self.ids, &batch.ids)];
        out.extend(self.mask.as_ref().map(|s| tensor(s, &batch.mask)));
        out.extend(self.type_ids.as_ref().map(|s| tensor(s, &batch.type_ids)));
        out
    }
}
