//! Protocol-neutral inference requests and responses, and their parameters.

use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// A request or tensor parameter value (KServe v2 `parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    String(String),
}

pub type Parameters = BTreeMap<String, ParamValue>;

// === impl ParamValue ===

impl ParamValue {
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ParamValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// Integer value, accepting any integer kind and integral doubles.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ParamValue::Int(i) => Some(*i),
            ParamValue::Uint(u) => i64::try_from(*u).ok(),
            ParamValue::Double(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
            _ => None,
        }
    }
}

/// An output the client asked for, with its per-output options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestedOutput {
    pub name: String,
    /// Classification extension: return the top `k` classes instead of the tensor.
    pub classification: Option<usize>,
    pub parameters: Parameters,
}

/// One inference request, after the protocol adapter decoded it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferRequest {
    pub model: String,
    /// Empty means "the latest ready version".
    pub version: String,
    pub id: String,
    pub parameters: Parameters,
    pub inputs: Vec<Tensor>,
    /// Empty means "all outputs".
    pub outputs: Vec<RequestedOutput>,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub parameters: Parameters,
    pub outputs: Vec<Tensor>,
}
