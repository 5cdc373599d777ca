//! Protobuf messages ↔ protocol-neutral requests and responses, including the
//! typed `contents` fields and `raw_input_contents` / `raw_output_contents`.

use bytes::Bytes;
use flotilla_core::protocol;
use flotilla_core::tensor::{join_bytes_elements, split_bytes_elements};
use flotilla_core::{DataType, Error, InferRequest, InferResponse, ParamValue, Parameters, Result, Tensor};
use flotilla_proto::inference::infer_parameter::ParameterChoice;
use flotilla_proto::inference::model_infer_response::InferOutputTensor;
use flotilla_proto::inference::{InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse};
use std::collections::HashMap;

fn param(p: &InferParameter) -> Option<ParamValue> {
    Some(match p.parameter_choice.as_ref()? {
        ParameterChoice::BoolParam(b) => ParamValue::Bool(*b),
        ParameterChoice::Int64Param(i) => ParamValue::Int(*i),
        ParameterChoice::StringParam(s) => ParamValue::String(s.clone()),
        ParameterChoice::DoubleParam(d) => ParamValue::Double(*d),
        ParameterChoice::Uint64Param(u) => ParamValue::Uint(*u),
    })
}

fn params(map: &HashMap<String, InferParameter>) -> Parameters {
    map.iter().filter_map(|(k, v)| Some((k.clone(), param(v)?))).collect()
}

fn param_to_proto(v: &ParamValue) -> InferParameter {
    let choice = match v {
        ParamValue::Bool(b) => ParameterChoice::BoolParam(*b),
        ParamValue::Int(i) => ParameterChoice::Int64Param(*i),
        ParamValue::Uint(u) => ParameterChoice::Uint64Param(*u),
        ParamValue::Double(d) => ParameterChoice::DoubleParam(*d),
        ParamValue::String(s) => ParameterChoice::StringParam(s.clone()),
    };
    InferParameter { parameter_choice: Some(choice) }
}

fn params_to_proto(p: &Parameters) -> HashMap<String, InferParameter> {
    p.iter().map(|(k, v)| (k.clone(), param_to_proto(v))).collect()
}

/// Which typed `contents` fields hold values (for error messages).
fn filled_fields(c: &InferTensorContents) -> Vec<&'static str> {
    let mut v = Vec::new();
    let fields: [(&str, bool); 8] = [
        ("bool_contents", !c.bool_contents.is_empty()),
        ("int_contents", !c.int_contents.is_empty()),
        ("int64_contents", !c.int64_contents.is_empty()),
        ("uint_contents", !c.uint_contents.is_empty()),
        ("uint64_contents", !c.uint64_contents.is_empty()),
        ("fp32_contents", !c.fp32_contents.is_empty()),
        ("fp64_contents", !c.fp64_contents.is_empty()),
        ("bytes_contents", !c.bytes_contents.is_empty()),
    ];
    for (name, filled) in fields {
        if filled {
            v.push(name);
        }
    }
    v
}

/// The typed `contents` field that carries `dt`.
pub fn contents_field(dt: DataType) -> Option<&'static str> {
    Some(match dt {
        DataType::Bool => "bool_contents",
        DataType::I8 | DataType::I16 | DataType::I32 => "int_contents",
        DataType::I64 => "int64_contents",
        DataType::U8 | DataType::U16 | DataType::U32 => "uint_contents",
        DataType::U64 => "uint64_contents",
        DataType::F32 => "fp32_contents",
        DataType::F64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::F16 | DataType::BF16 => return None,
    })
}

/// Converts typed contents into wire bytes for `dt`, checking ranges.
pub fn contents_to_bytes(c: &InferTensorContents, dt: DataType, what: &str) -> Result<Vec<u8>> {
    let filled = filled_fields(c);
    let Some(field) = contents_field(dt) else {
        return Err(Error::invalid(format!("{what}: {dt} has no typed contents field; send it in raw_input_contents")));
    };
    if let Some(other) = filled.iter().find(|f| **f != field) {
        return Err(Error::invalid(format!("{what}: datatype {dt} expects {field}, got {other}")));
    }
    macro_rules! narrow {
        ($src:expr, $t:ty) => {{
            let mut out = Vec::with_capacity($src.len() * std::mem::size_of::<$t>());
            for v in $src.iter() {
                let n = <$t>::try_from(*v)
                    .map_err(|_| Error::invalid(format!("{what}: value {v} is out of range for {dt}")))?;
                out.extend_from_slice(&n.to_le_bytes());
            }
            out
        }};
    }
    Ok(match dt {
        DataType::Bool => c.bool_contents.iter().map(|b| u8::from(*b)).collect(),
        DataType::I8 => narrow!(c.int_contents, i8),
        DataType::I16 => narrow!(c.int_contents, i16),
        DataType::I32 => c.int_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::I64 => c.int64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::U8 => narrow!(c.uint_contents, u8),
        DataType::U16 => narrow!(c.uint_contents, u16),
        DataType::U32 => c.uint_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::U64 => c.uint64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::F32 => c.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::F64 => c.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DataType::Bytes => join_bytes_elements(c.bytes_contents.iter().map(|b| &b[..])),
        DataType::F16 | DataType::BF16 => unreachable!("handled above"),
    })
}

/// Wire bytes → typed contents (used for tests and clients that want typed outputs).
pub fn bytes_to_contents(t: &Tensor) -> Result<InferTensorContents> {
    let mut c = InferTensorContents::default();
    macro_rules! read {
        ($t:ty, $n:expr) => {
            t.data.chunks_exact($n).map(|b| <$t>::from_le_bytes(b.try_into().unwrap_or([0; $n])))
        };
    }
    match t.datatype {
        DataType::Bool => c.bool_contents = t.data.iter().map(|b| *b != 0).collect(),
        DataType::I8 => c.int_contents = t.data.iter().map(|b| *b as i8 as i32).collect(),
        DataType::I16 => c.int_contents = read!(i16, 2).map(i32::from).collect(),
        DataType::I32 => c.int_contents = read!(i32, 4).collect(),
        DataType::I64 => c.int64_contents = read!(i64, 8).collect(),
        DataType::U8 => c.uint_contents = t.data.iter().map(|b| u32::from(*b)).collect(),
        DataType::U16 => c.uint_contents = read!(u16, 2).map(u32::from).collect(),
        DataType::U32 => c.uint_contents = read!(u32, 4).collect(),
        DataType::U64 => c.uint64_contents = read!(u64, 8).collect(),
        DataType::F32 => c.fp32_contents = read!(f32, 4).collect(),
        DataType::F64 => c.fp64_contents = read!(f64, 8).collect(),
        DataType::Bytes => {
            c.bytes_contents = split_bytes_elements(&t.data, &t.name)?.into_iter().map(Bytes::copy_from_slice).collect()
        }
        DataType::F16 | DataType::BF16 => {
            return Err(Error::invalid(format!("{}: {} has no typed contents field", t.name, t.datatype)))
        }
    }
    Ok(c)
}

/// One tensor from its protobuf fields: `raw` bytes or typed `contents`, not both.
fn tensor(
    name: String,
    datatype: &str,
    shape: Vec<i64>,
    parameters: &HashMap<String, InferParameter>,
    raw: Option<Bytes>,
    contents: Option<&InferTensorContents>,
    what: &str,
) -> Result<Tensor> {
    let datatype = DataType::parse(datatype).map_err(|e| Error::invalid(format!("{what}: {}", e.message)))?;
    let data = match (raw, contents) {
        (Some(_), Some(c)) if !filled_fields(c).is_empty() => {
            return Err(Error::invalid(format!("{what}: has both contents and raw contents; give one")))
        }
        (Some(bytes), _) => bytes,
        (None, Some(c)) => Bytes::from(contents_to_bytes(c, datatype, what)?),
        (None, None) => Bytes::new(),
    };
    let mut t = Tensor::new(name, datatype, shape, data);
    t.parameters = params(parameters);
    Ok(t)
}

/// The raw contents, one per tensor in order, or none at all.
fn raw_contents(raw: Vec<Bytes>, tensors: usize, field: &str, what: &str) -> Result<std::vec::IntoIter<Bytes>> {
    if !raw.is_empty() && raw.len() != tensors {
        return Err(Error::invalid(format!(
            "{field} has {} entries but the {what} has {tensors}; give one per tensor, in order",
            raw.len()
        )));
    }
    Ok(raw.into_iter())
}

/// Decodes a `ModelInferRequest`.
pub fn request_from_proto(mut req: ModelInferRequest) -> Result<InferRequest> {
    let raw = std::mem::take(&mut req.raw_input_contents);
    let mut raw = raw_contents(raw, req.inputs.len(), "raw_input_contents", "request's inputs")?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for i in req.inputs {
        let what = format!("input '{}'", i.name);
        inputs.push(tensor(i.name, &i.datatype, i.shape, &i.parameters, raw.next(), i.contents.as_ref(), &what)?);
    }
    let mut outputs = Vec::with_capacity(req.outputs.len());
    for o in req.outputs {
        // binary_data is an HTTP encoding choice: gRPC always answers in raw_output_contents.
        let (output, _binary) = protocol::requested_output(o.name, params(&o.parameters))?;
        outputs.push(output);
    }
    Ok(InferRequest {
        model: req.model_name,
        version: req.model_version,
        id: req.id,
        parameters: params(&req.parameters),
        inputs,
        outputs,
    })
}

/// Encodes a request for another server (the router forwarding to a worker): every tensor in
/// `raw_input_contents` (no copy: the bytes are shared), outputs with their parameters.
pub fn request_to_proto(r: &InferRequest) -> ModelInferRequest {
    use flotilla_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    ModelInferRequest {
        model_name: r.model.clone(),
        model_version: r.version.clone(),
        id: r.id.clone(),
        parameters: params_to_proto(&r.parameters),
        inputs: r
            .inputs
            .iter()
            .map(|t| InferInputTensor {
                name: t.name.clone(),
                datatype: t.datatype.as_str().to_string(),
                shape: t.shape.clone(),
                parameters: params_to_proto(&t.parameters),
                contents: None,
            })
            .collect(),
        outputs: r
            .outputs
            .iter()
            .map(|o| InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: params_to_proto(&protocol::output_parameters(o)),
            })
            .collect(),
        raw_input_contents: r.inputs.iter().map(|t| t.data.clone()).collect(),
    }
}

/// Decodes another server's response (raw or typed contents); a malformed one is an internal error.
pub fn response_from_proto(mut resp: ModelInferResponse) -> Result<InferResponse> {
    let bad = |e: Error| Error::internal(format!("the worker's response is malformed: {}", e.message));
    let raw = std::mem::take(&mut resp.raw_output_contents);
    let mut raw = raw_contents(raw, resp.outputs.len(), "raw_output_contents", "response's outputs").map_err(bad)?;
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    for o in resp.outputs {
        let what = format!("output '{}'", o.name);
        outputs.push(
            tensor(o.name, &o.datatype, o.shape, &o.parameters, raw.next(), o.contents.as_ref(), &what).map_err(bad)?,
        );
    }
    Ok(InferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version,
        id: resp.id,
        parameters: params(&resp.parameters),
        outputs,
    })
}

/// Encodes a response with every output in `raw_output_contents`, as Triton does.
pub fn response_to_proto(resp: InferResponse) -> ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for t in resp.outputs {
        outputs.push(InferOutputTensor {
            name: t.name,
            datatype: t.datatype.as_str().to_string(),
            shape: t.shape,
            parameters: params_to_proto(&t.parameters),
            contents: None,
        });
        raw.push(t.data);
    }
    ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version,
        id: resp.id,
        parameters: params_to_proto(&resp.parameters),
        outputs,
        raw_output_contents: raw,
    }
}

mod meta;
pub use meta::*;

#[cfg(test)]
mod tests;
