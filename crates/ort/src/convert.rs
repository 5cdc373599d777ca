//! Protocol tensors ↔ ONNX Runtime values.
//!
//! Inputs borrow the request's bytes when they are aligned for their element
//! type and need no cast (BOOL and BYTES, which ORT stores differently, and
//! unaligned data are copied once). Outputs hand ORT's own buffer to the
//! response (the value lives as long as the bytes); only casts copy.

use crate::cast;
use bytes::Bytes;
use flotilla_core::tensor::{join_bytes_elements, split_bytes_elements};
use flotilla_core::{DataType, Error, Result, Tensor};
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};
use ort::session::SessionInputValue;
use ort::value::{DynValue, PrimitiveTensorElementType, TensorElementType, TensorRef, ValueType};

/// The protocol datatype of an ORT element type (None: no protocol equivalent).
pub fn protocol_type(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Bfloat16 => DataType::BF16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn ort_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{what}: onnxruntime: {e}"))
}

/// Copies little-endian bytes into a vector of `T` (aligned, unlike the request's bytes may be).
fn collect_vec<T: bytemuck::Pod>(data: &[u8]) -> Vec<T> {
    let n = data.len() / std::mem::size_of::<T>();
    let mut out = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&data[..n * std::mem::size_of::<T>()]);
    out
}

/// A fixed-size input: borrowed when the bytes are aligned for `T`, else copied once.
fn primitive<'a, T>(data: &'a [u8], shape: Vec<i64>, what: &str) -> Result<SessionInputValue<'a>>
where
    T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug,
{
    match bytemuck::try_cast_slice::<u8, T>(data) {
        Ok(elements) => borrowed(elements, shape, what),
        Err(_) => owned(collect_vec::<T>(data), shape, what),
    }
}

fn borrowed<'a, T>(elements: &'a [T], shape: Vec<i64>, what: &str) -> Result<SessionInputValue<'a>>
where
    T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    Ok(TensorRef::from_array_view((shape, elements)).map_err(|e| ort_error(what, e))?.into())
}

fn owned<T>(elements: Vec<T>, shape: Vec<i64>, what: &str) -> Result<SessionInputValue<'static>>
where
    T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    Ok(ort::value::Tensor::from_array((shape, elements)).map_err(|e| ort_error(what, e))?.into())
}

/// An ORT input value for `t`, as the graph's element type `model` with `shape`
/// (the tensor's own shape, or its configured reshape).
pub fn to_value<'a>(t: &'a Tensor, model: DataType, shape: Vec<i64>) -> Result<SessionInputValue<'a>> {
    let what = format!("input '{}'", t.name);
    let what = what.as_str();
    if t.datatype == DataType::Bytes || model == DataType::Bytes {
        if t.datatype != model {
            return Err(Error::invalid(format!("{what}: the model takes {model}, got {}", t.datatype)));
        }
        let strings: Vec<String> =
            split_bytes_elements(&t.data, what)?.into_iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        if strings.iter().any(|s| s.contains('\0')) {
            return Err(Error::invalid(format!("{what}: ONNX Runtime strings cannot hold NUL bytes")));
        }
        let value = ort::value::Tensor::from_string_array((shape, strings.as_slice()))
            .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
        return Ok(value.into());
    }
    t.validate(what)?;
    if t.datatype != model {
        let data = cast::cast(&t.data, t.datatype, model, what)?;
        return from_owned_bytes(&data, model, shape, what);
    }
    let data: &'a [u8] = &t.data;
    match model {
        DataType::Bool => owned(data.iter().map(|b| *b != 0).collect::<Vec<bool>>(), shape, what),
        DataType::U8 => primitive::<u8>(data, shape, what),
        DataType::U16 => primitive::<u16>(data, shape, what),
        DataType::U32 => primitive::<u32>(data, shape, what),
        DataType::U64 => primitive::<u64>(data, shape, what),
        DataType::I8 => primitive::<i8>(data, shape, what),
        DataType::I16 => primitive::<i16>(data, shape, what),
        DataType::I32 => primitive::<i32>(data, shape, what),
        DataType::I64 => primitive::<i64>(data, shape, what),
        DataType::F16 => match bytemuck::try_cast_slice::<u8, u16>(data) {
            Ok(bits) => borrowed(bits.reinterpret_cast::<f16>(), shape, what),
            Err(_) => from_owned_bytes(data, model, shape, what),
        },
        DataType::BF16 => match bytemuck::try_cast_slice::<u8, u16>(data) {
            Ok(bits) => borrowed(bits.reinterpret_cast::<bf16>(), shape, what),
            Err(_) => from_owned_bytes(data, model, shape, what),
        },
        DataType::F32 => primitive::<f32>(data, shape, what),
        DataType::F64 => primitive::<f64>(data, shape, what),
        DataType::Bytes => Err(Error::internal(format!("{what}: BYTES reached the fixed-size path"))),
    }
}

/// An owned ORT value from cast bytes (which the caller drops after this returns).
fn from_owned_bytes(data: &[u8], model: DataType, shape: Vec<i64>, what: &str) -> Result<SessionInputValue<'static>> {
    fn collect<T: PrimitiveTensorElementType + bytemuck::Pod + std::fmt::Debug>(
        data: &[u8],
        shape: Vec<i64>,
        what: &str,
    ) -> Result<SessionInputValue<'static>> {
        owned(collect_vec::<T>(data), shape, what)
    }
    match model {
        DataType::Bool => owned(data.iter().map(|b| *b != 0).collect::<Vec<bool>>(), shape, what),
        DataType::U8 => collect::<u8>(data, shape, what),
        DataType::U16 => collect::<u16>(data, shape, what),
        DataType::U32 => collect::<u32>(data, shape, what),
        DataType::U64 => collect::<u64>(data, shape, what),
        DataType::I8 => collect::<i8>(data, shape, what),
        DataType::I16 => collect::<i16>(data, shape, what),
        DataType::I32 => collect::<i32>(data, shape, what),
        DataType::I64 => collect::<i64>(data, shape, what),
        DataType::F16 => owned(collect_vec::<u16>(data).into_iter().map(f16::from_bits).collect(), shape, what),
        DataType::BF16 => owned(collect_vec::<u16>(data).into_iter().map(bf16::from_bits).collect(), shape, what),
        DataType::F32 => collect::<f32>(data, shape, what),
        DataType::F64 => collect::<f64>(data, shape, what),
        DataType::Bytes => Err(Error::internal(format!("{what}: BYTES reached the fixed-size path"))),
    }
}

/// The raw little-endian bytes of a fixed-size tensor value (a view of ORT's buffer).
fn raw_bytes(value: &DynValue, dt: DataType) -> ort::Result<&[u8]> {
    fn view<T: PrimitiveTensorElementType + bytemuck::NoUninit>(value: &DynValue) -> ort::Result<&[u8]> {
        value.try_extract_tensor::<T>().map(|(_, elements)| bytemuck::cast_slice(elements))
    }
    match dt {
        DataType::Bool => view::<bool>(value),
        DataType::U8 => view::<u8>(value),
        DataType::U16 => view::<u16>(value),
        DataType::U32 => view::<u32>(value),
        DataType::U64 => view::<u64>(value),
        DataType::I8 => view::<i8>(value),
        DataType::I16 => view::<i16>(value),
        DataType::I32 => view::<i32>(value),
        DataType::I64 => view::<i64>(value),
        DataType::F16 => value.try_extract_tensor::<f16>().map(|(_, e)| bytemuck::cast_slice(e.reinterpret_cast())),
        DataType::BF16 => value.try_extract_tensor::<bf16>().map(|(_, e)| bytemuck::cast_slice(e.reinterpret_cast())),
        DataType::F32 => view::<f32>(value),
        DataType::F64 => view::<f64>(value),
        DataType::Bytes => Err(ort::Error::new("string tensors have no raw bytes")),
    }
}

/// An ORT output value that owns the buffer a response's bytes point into.
struct OutputBuffer {
    value: DynValue,
    datatype: DataType,
}

impl AsRef<[u8]> for OutputBuffer {
    fn as_ref(&self) -> &[u8] {
        // Checked to succeed before the buffer was wrapped (see `from_value`).
        raw_bytes(&self.value, self.datatype).unwrap_or_default()
    }
}

/// A protocol tensor from an ORT output, cast to `want` (the configured datatype) when given;
/// `shape` replaces the value's own shape when the configuration reshapes the output.
pub fn from_value(name: &str, value: DynValue, want: Option<DataType>, shape: Option<Vec<i64>>) -> Result<Tensor> {
    let what = format!("output '{name}'");
    let ValueType::Tensor { ty, shape: own_shape, .. } = value.dtype() else {
        return Err(Error::internal(format!("{what}: the model produced a {} instead of a tensor", value.dtype())));
    };
    let got = protocol_type(*ty)
        .ok_or_else(|| Error::internal(format!("{what}: ONNX element type {ty} has no protocol datatype")))?;
    let shape = shape.unwrap_or_else(|| own_shape.to_vec());
    let want = want.unwrap_or(got);
    if got == DataType::Bytes || want == DataType::Bytes {
        if got != want {
            return Err(Error::internal(format!("{what}: cannot cast {got} to {want}")));
        }
        let (_, strings) = value.try_extract_strings().map_err(|e| ort_error(&what, e))?;
        let data = join_bytes_elements(strings.iter().map(|s| s.as_bytes()));
        return Ok(Tensor::new(name, DataType::Bytes, shape, data));
    }
    let raw = raw_bytes(&value, got).map_err(|e| ort_error(&what, e))?;
    if got != want {
        let data = cast::cast(raw, got, want, &what)?;
        return Ok(Tensor::new(name, want, shape, data));
    }
    let data = Bytes::from_owner(OutputBuffer { value, datatype: got });
    Ok(Tensor::new(name, got, shape, data))
}
