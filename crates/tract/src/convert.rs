//! Protocol tensors ↔ tract tensors.

use flotilla_core::tensor::{join_bytes_elements, split_bytes_elements};
use flotilla_core::{DataType, Error, Result, Tensor};
use tract_onnx::prelude::*;

/// The tract datum type for a protocol datatype.
pub fn tract_type(dt: DataType) -> Result<DatumType> {
    Ok(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::U8 => DatumType::U8,
        DataType::U16 => DatumType::U16,
        DataType::U32 => DatumType::U32,
        DataType::U64 => DatumType::U64,
        DataType::I8 => DatumType::I8,
        DataType::I16 => DatumType::I16,
        DataType::I32 => DatumType::I32,
        DataType::I64 => DatumType::I64,
        DataType::F16 => DatumType::F16,
        DataType::F32 => DatumType::F32,
        DataType::F64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
        DataType::BF16 => return Err(Error::invalid("tract has no BF16 tensors; serve BF16 models with ONNX Runtime")),
    })
}

fn protocol_type(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::U8,
        DatumType::U16 => DataType::U16,
        DatumType::U32 => DataType::U32,
        DatumType::U64 => DataType::U64,
        DatumType::I8 => DataType::I8,
        DatumType::I16 => DataType::I16,
        DatumType::I32 => DataType::I32,
        DatumType::I64 => DataType::I64,
        DatumType::F16 => DataType::F16,
        DatumType::F32 => DataType::F32,
        DatumType::F64 => DataType::F64,
        DatumType::String => DataType::Bytes,
        _ => return None,
    })
}

fn usize_shape(t: &Tensor) -> Result<Vec<usize>> {
    t.shape
        .iter()
        .map(|d| usize::try_from(*d).map_err(|_| Error::invalid(format!("input '{}': bad dimension {d}", t.name))))
        .collect()
}

/// Copies a validated protocol tensor into a tract tensor.
pub fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor> {
    let shape = usize_shape(t)?;
    let dt = tract_type(t.datatype)?;
    if dt == DatumType::String {
        let strings: Vec<String> = split_bytes_elements(&t.data, &t.name)?
            .into_iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let array = tract_ndarray::ArrayD::from_shape_vec(shape, strings)
            .map_err(|e| Error::invalid(format!("input '{}': {e}", t.name)))?;
        return Ok(array.into_tensor());
    }
    let mut out = tract_onnx::prelude::Tensor::zero_dt(dt, &shape)
        .map_err(|e| Error::internal(format!("input '{}': {e}", t.name)))?;
    let dst = out.as_bytes_mut();
    if dst.len() != t.data.len() {
        return Err(Error::invalid(format!(
            "input '{}': {} bytes for shape {:?}, expected {}",
            t.name,
            t.data.len(),
            t.shape,
            dst.len()
        )));
    }
    dst.copy_from_slice(&t.data);
    Ok(out)
}

/// Copies a tract output into a protocol tensor, cast to `want` (the configured
/// datatype) when given; outputs the configuration does not name keep their own type.
pub fn from_tract(name: &str, want: Option<DataType>, value: &tract_onnx::prelude::Tensor) -> Result<Tensor> {
    let shape: Vec<i64> = value.shape().iter().map(|d| *d as i64).collect();
    let got = protocol_type(value.datum_type())
        .ok_or_else(|| Error::internal(format!("output '{name}': unsupported tract type {:?}", value.datum_type())))?;
    let want = want.unwrap_or(got);
    // Borrowed unless a cast is needed: the only copy is into the protocol tensor below.
    let value = if got != want && want != DataType::Bytes && got != DataType::Bytes {
        let target = tract_type(want)?;
        value
            .cast_to_dt(target)
            .map_err(|e| Error::internal(format!("output '{name}': cannot cast {got} to {want}: {e}")))?
    } else {
        std::borrow::Cow::Borrowed(value)
    };
    if value.datum_type() == DatumType::String {
        let view =
            value.to_plain_array_view::<String>().map_err(|e| Error::internal(format!("output '{name}': {e}")))?;
        let data = join_bytes_elements(view.iter().map(|s| s.as_bytes()));
        return Ok(Tensor::new(name, DataType::Bytes, shape, data));
    }
    let dt = protocol_type(value.datum_type()).unwrap_or(want);
    Ok(Tensor::new(name, dt, shape, value.as_bytes().to_vec()))
}
