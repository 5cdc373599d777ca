//! Completes a model configuration from the ONNX graph, as Triton's ONNX
//! Runtime backend does: inputs and outputs with their types and dims, and a
//! max_batch_size when every tensor has a variable first dimension.

use flotilla_core::engine::AutocompleteOptions;
use flotilla_core::{DataType, Error, ModelConfig, Result};
use flotilla_proto::inference::{ModelInput, ModelOutput};
use std::path::Path;
use tract_onnx::pb::{tensor_shape_proto::dimension, type_proto, ValueInfoProto};
use tract_onnx::prelude::Framework;

/// ONNX `TensorProto.DataType` → protocol datatype.
fn onnx_type(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::F32,
        2 => DataType::U8,
        3 => DataType::I8,
        4 => DataType::U16,
        5 => DataType::I16,
        6 => DataType::I32,
        7 => DataType::I64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::F16,
        11 => DataType::F64,
        12 => DataType::U32,
        13 => DataType::U64,
        16 => DataType::BF16,
        _ => return None,
    })
}

/// (name, datatype, dims with -1 for symbolic or unknown).
fn describe(v: &ValueInfoProto, file: &Path) -> Result<(String, DataType, Vec<i64>)> {
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(Error::invalid(format!("{}: graph tensor '{}' is not a tensor", file.display(), v.name)));
    };
    let dt = onnx_type(t.elem_type).ok_or_else(|| {
        Error::invalid(format!("{}: tensor '{}' has unsupported ONNX type {}", file.display(), v.name, t.elem_type))
    })?;
    let dims = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(n)) if n > 0 => n,
                    _ => -1,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((v.name.clone(), dt, dims))
}

pub fn complete(config: &mut ModelConfig, file: &Path, options: &AutocompleteOptions) -> Result<()> {
    let proto = tract_onnx::onnx()
        .proto_model_for_path(file)
        .map_err(|e| Error::invalid(format!("{}: cannot read ONNX model: {e}", file.display())))?;
    let graph =
        proto.graph.as_ref().ok_or_else(|| Error::invalid(format!("{}: ONNX model has no graph", file.display())))?;
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(|v| describe(v, file))
        .collect::<Result<_>>()?;
    let outputs: Vec<_> = graph.output.iter().map(|v| describe(v, file)).collect::<Result<_>>()?;

    let can_batch = inputs.iter().chain(&outputs).all(|(_, _, d)| d.first() == Some(&-1));
    if config.max_batch_size == 0 && config.input.is_empty() && config.output.is_empty() && can_batch {
        config.max_batch_size = options.default_max_batch_size.max(0);
    }
    let strip = usize::from(config.max_batch_size > 0);
    if config.max_batch_size > 0 && !can_batch {
        return Err(Error::invalid(format!(
            "{}: max_batch_size is {} but not every graph input and output has a variable first dimension",
            file.display(),
            config.max_batch_size
        )));
    }
    if config.input.is_empty() {
        config.input = inputs
            .into_iter()
            .map(|(name, dt, dims)| ModelInput {
                name,
                data_type: dt.to_config() as i32,
                dims: dims[strip.min(dims.len())..].to_vec(),
                ..Default::default()
            })
            .collect();
    }
    if config.output.is_empty() {
        config.output = outputs
            .into_iter()
            .map(|(name, dt, dims)| ModelOutput {
                name,
                data_type: dt.to_config() as i32,
                dims: dims[strip.min(dims.len())..].to_vec(),
                ..Default::default()
            })
            .collect();
    }
    Ok(())
}
