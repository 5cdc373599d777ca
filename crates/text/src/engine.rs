//! A loaded text model: strings in, one FP32 row per string out. Runs on the
//! engine threads (tokenization included), never on the async runtime.

use crate::encode::{decode_strings, TextTokenizer};
use crate::encoder::EncoderPlan;
use crate::options::Pooling;
use crate::pool;
use flotilla_core::engine::{Engine, Phases};
use flotilla_core::{DataType, Error, Result, Tensor};
use std::sync::Arc;

pub struct TextEngine {
    pub(crate) tokenizer: TextTokenizer,
    pub(crate) encoder: Arc<dyn Engine>,
    pub(crate) plan: EncoderPlan,
    pub(crate) pooling: Pooling,
    pub(crate) normalize: bool,
    /// The configured output's name.
    pub(crate) output: String,
}

impl Engine for TextEngine {
    fn infer(&self, inputs: &[Tensor], phases: &mut Phases) -> Result<Vec<Tensor>> {
        let input = inputs.first().ok_or_else(|| Error::invalid("a text model needs one BYTES input"))?;
        let texts = decode_strings(input)?;
        let batch = self.tokenizer.encode(&texts)?;
        // The encoder marks input_done / infer_done: tokenization counts as compute_input.
        let produced = self.encoder.infer(&self.plan.inputs(&batch), phases)?;
        let out = produced
            .into_iter()
            .find(|t| t.name == self.plan.output)
            .ok_or_else(|| Error::internal(format!("the encoder did not produce output '{}'", self.plan.output)))?;
        if out.datatype != DataType::F32 {
            return Err(Error::internal(format!("encoder output '{}' is {}, not FP32", out.name, out.datatype)));
        }
        let values: Vec<f32> = out.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let unexpected = || {
            Error::internal(format!(
                "encoder output '{}' has shape {:?} for a batch of {} rows of {} tokens",
                out.name, out.shape, batch.rows, batch.len
            ))
        };
        let dims: Vec<usize> = out.shape.iter().map(|d| usize::try_from(*d).unwrap_or(usize::MAX)).collect();
        if dims.iter().try_fold(1usize, |n, d| n.checked_mul(*d)) != Some(values.len()) {
            return Err(unexpected());
        }
        let (mut rows, width) = match (self.pooling, dims.as_slice()) {
            (Pooling::None, &[n, w]) if n == batch.rows => (values, w),
            (Pooling::Mean, &[n, l, h]) if n == batch.rows && l == batch.len => {
                (pool::mean(&values, &batch.mask, n, l, h), h)
            }
            (Pooling::Cls, &[n, l, h]) if n == batch.rows && l == batch.len => (pool::cls(&values, n, l, h), h),
            _ => return Err(unexpected()),
        };
        if self.normalize {
            pool::l2_normalize(&mut rows, width);
        }
        let data: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(vec![Tensor::new(self.output.clone(), DataType::F32, vec![batch.rows as i64, width as i64], data)])
    }
}
