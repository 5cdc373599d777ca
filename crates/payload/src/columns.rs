//! The payload log's Parquet schema, one file per model (and version), one row per request:
//!
//! | column | type | |
//! |---|---|---|
//! | `request_id` | string | the request's id, or a generated one (`flotilla-<n>`) |
//! | `time` | timestamp[us, UTC] | when the request arrived |
//! | `model`, `version` | string | |
//! | `status` | string | `ok`, or the error kind (`invalid_argument`, `resource_exhausted`, ...) |
//! | `error` | string | the error message (null when ok) |
//! | `latency_us` | int64 | arrival to answer, in the server |
//! | `trace_id` | string | the W3C trace id when tracing is on |
//! | `input.<name>` | list | the input after enrichment, flattened: float (FP16/BF16/FP32), double (FP64), int64 (signed and 8- to 32-bit unsigned integers), uint64, bool, binary (BYTES); a string of hex SHA-256 digests for hashed inputs |
//! | `input.<name>.shape` | list<int64> | its shape |
//! | `output.<name>`, `output.<name>.shape` | | the model's outputs, the same way (null for a failed request) |
//!
//! Inputs listed in `drop` have no columns. A model's declared inputs and outputs give the columns.

use crate::{PayloadError, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType as Arrow, Field, Schema, TimeUnit};
use flotilla_core::config::{input_datatype, output_datatype};
use flotilla_core::tensor::{join_bytes_elements, split_bytes_elements};
use flotilla_core::{DataType, ModelConfig, Tensor};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// How a tensor's elements are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    F32,
    F64,
    I64,
    U64,
    Bool,
    Bytes,
    /// Hex digests of a hashed input's elements.
    Digest,
}

impl Kind {
    pub fn of(dt: DataType) -> Self {
        match dt {
            DataType::F16 | DataType::BF16 | DataType::F32 => Self::F32,
            DataType::F64 => Self::F64,
            DataType::U64 => Self::U64,
            DataType::Bool => Self::Bool,
            DataType::Bytes => Self::Bytes,
            _ => Self::I64,
        }
    }

    fn item(self) -> Arrow {
        match self {
            Self::F32 => Arrow::Float32,
            Self::F64 => Arrow::Float64,
            Self::I64 => Arrow::Int64,
            Self::U64 => Arrow::UInt64,
            Self::Bool => Arrow::Boolean,
            Self::Bytes => Arrow::Binary,
            Self::Digest => Arrow::Utf8,
        }
    }
}

/// One logged tensor column (with its `.shape` column beside it).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// `input.<name>` or `output.<name>`.
    pub name: String,
    /// The tensor's name.
    pub tensor: String,
    pub input: bool,
    pub kind: Kind,
    /// The declared datatype (what a replay sends).
    pub datatype: DataType,
}

/// A tensor's elements as logged.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Bool(Vec<bool>),
    Bytes(Vec<Vec<u8>>),
    Digest(Vec<String>),
}

/// The columns of a model's log: its declared inputs (less `drop`; `hash` as digests), then outputs.
pub fn layout(config: &ModelConfig, drop: &[String], hash: &[String]) -> Vec<Column> {
    let mut out = Vec::new();
    for i in &config.input {
        if drop.contains(&i.name) {
            continue;
        }
        let dt = input_datatype(i);
        let kind = if hash.contains(&i.name) { Kind::Digest } else { Kind::of(dt) };
        out.push(Column { name: format!("input.{}", i.name), tensor: i.name.clone(), input: true, kind, datatype: dt });
    }
    for o in &config.output {
        let dt = output_datatype(o);
        out.push(Column {
            name: format!("output.{}", o.name),
            tensor: o.name.clone(),
            input: false,
            kind: Kind::of(dt),
            datatype: dt,
        });
    }
    out
}

/// The Arrow schema of a log with `columns`.
pub fn schema(columns: &[Column]) -> Arc<Schema> {
    let text = |n: &str, null: bool| Field::new(n, Arrow::Utf8, null);
    let mut fields = vec![
        text("request_id", false),
        Field::new("time", Arrow::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        text("model", false),
        text("version", false),
        text("status", false),
        text("error", true),
        Field::new("latency_us", Arrow::Int64, false),
        text("trace_id", true),
    ];
    for c in columns {
        fields.push(Field::new(
            c.name.clone(),
            Arrow::List(Arc::new(Field::new_list_field(c.kind.item(), true))),
            true,
        ));
        fields.push(Field::new(
            format!("{}.shape", c.name),
            Arrow::List(Arc::new(Field::new_list_field(Arrow::Int64, true))),
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// A tensor's elements as `kind` keeps them (`salt` for digests); `None` when its datatype does
/// not fit the column (a client sent another type than the model declares).
pub fn values(t: &Tensor, kind: Kind, salt: &[u8]) -> Option<Values> {
    let d = &t.data;
    macro_rules! read {
        ($t:ty, $n:expr) => {
            d.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])))
        };
    }
    Some(match (kind, t.datatype) {
        (Kind::Digest, dt) => {
            let elements: Vec<Vec<u8>> = match dt {
                DataType::Bytes => split_bytes_elements(d, "").ok()?.into_iter().map(<[u8]>::to_vec).collect(),
                dt => d.chunks(dt.size().unwrap_or(1).max(1)).map(<[u8]>::to_vec).collect(),
            };
            Values::Digest(elements.iter().map(|e| digest(salt, e)).collect())
        }
        (Kind::F32, DataType::F32) => Values::F32(read!(f32, 4).collect()),
        (Kind::F32, DataType::F16 | DataType::BF16) => {
            Values::F32(flotilla_core::tensor::to_f64(t.datatype, d).ok()?.into_iter().map(|x| x as f32).collect())
        }
        (Kind::F64, DataType::F64) => Values::F64(read!(f64, 8).collect()),
        (Kind::U64, DataType::U64) => Values::U64(read!(u64, 8).collect()),
        (Kind::Bool, DataType::Bool) => Values::Bool(d.iter().map(|b| *b != 0).collect()),
        (Kind::Bytes, DataType::Bytes) => {
            Values::Bytes(split_bytes_elements(d, "").ok()?.into_iter().map(<[u8]>::to_vec).collect())
        }
        (Kind::I64, DataType::I64) => Values::I64(read!(i64, 8).collect()),
        (Kind::I64, DataType::I32) => Values::I64(read!(i32, 4).map(i64::from).collect()),
        (Kind::I64, DataType::I16) => Values::I64(read!(i16, 2).map(i64::from).collect()),
        (Kind::I64, DataType::I8) => Values::I64(d.iter().map(|b| i64::from(*b as i8)).collect()),
        (Kind::I64, DataType::U32) => Values::I64(read!(u32, 4).map(i64::from).collect()),
        (Kind::I64, DataType::U16) => Values::I64(read!(u16, 2).map(i64::from).collect()),
        (Kind::I64, DataType::U8) => Values::I64(d.iter().map(|b| i64::from(*b)).collect()),
        _ => return None,
    })
}

/// Hex SHA-256 of `salt` then `bytes`.
fn digest(salt: &[u8], bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A list column of `kind` from one optional value list per row.
pub fn list_array(kind: Kind, rows: &[Option<&Values>]) -> ArrayRef {
    use arrow_array::builder::*;
    macro_rules! build {
        ($builder:expr, $variant:ident, $push:expr) => {{
            let mut b = ListBuilder::new($builder);
            for r in rows {
                match r {
                    Some(Values::$variant(v)) => {
                        for x in v {
                            $push(b.values(), x);
                        }
                        b.append(true);
                    }
                    _ => b.append(false),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match kind {
        Kind::F32 => build!(Float32Builder::new(), F32, |b: &mut Float32Builder, x: &f32| b.append_value(*x)),
        Kind::F64 => build!(Float64Builder::new(), F64, |b: &mut Float64Builder, x: &f64| b.append_value(*x)),
        Kind::I64 => build!(Int64Builder::new(), I64, |b: &mut Int64Builder, x: &i64| b.append_value(*x)),
        Kind::U64 => build!(UInt64Builder::new(), U64, |b: &mut UInt64Builder, x: &u64| b.append_value(*x)),
        Kind::Bool => build!(BooleanBuilder::new(), Bool, |b: &mut BooleanBuilder, x: &bool| b.append_value(*x)),
        Kind::Bytes => build!(BinaryBuilder::new(), Bytes, |b: &mut BinaryBuilder, x: &Vec<u8>| b.append_value(x)),
        Kind::Digest => build!(StringBuilder::new(), Digest, |b: &mut StringBuilder, x: &String| b.append_value(x)),
    }
}

/// A shape column.
pub fn shape_array(rows: &[Option<&[i64]>]) -> ArrayRef {
    use arrow_array::builder::{Int64Builder, ListBuilder};
    let mut b = ListBuilder::new(Int64Builder::new());
    for r in rows {
        match r {
            Some(s) => {
                b.values().append_slice(s);
                b.append(true);
            }
            None => b.append(false),
        }
    }
    Arc::new(b.finish())
}

/// The tensor logged in `column` (and its shape column) at `row` of `batch`, as `datatype`;
/// `None` when the row holds none (a failed request's outputs, a dropped input).
pub fn tensor_at(batch: &RecordBatch, column: &str, row: usize, datatype: DataType) -> Result<Option<Tensor>> {
    let (Some(values), Some(shape)) = (batch.column_by_name(column), batch.column_by_name(&format!("{column}.shape")))
    else {
        return Ok(None);
    };
    let bad = |m: &str| PayloadError::Invalid(format!("column '{column}' row {}: {m}", row + 1));
    let lists = values.as_list_opt::<i32>().ok_or_else(|| bad("not a list column"))?;
    let shapes = shape.as_list_opt::<i32>().ok_or_else(|| bad("its shape is not a list column"))?;
    if lists.is_null(row) || shapes.is_null(row) {
        return Ok(None);
    }
    let items = lists.value(row);
    let shape: Vec<i64> =
        shapes.value(row).as_primitive_opt::<Int64Type>().ok_or_else(|| bad("shape type"))?.values().to_vec();
    let elements = match items.data_type() {
        Arrow::Float32 => {
            Elements::F64(items.as_primitive::<Float32Type>().values().iter().map(|x| f64::from(*x)).collect())
        }
        Arrow::Float64 => Elements::F64(items.as_primitive::<Float64Type>().values().to_vec()),
        Arrow::Int64 => Elements::I64(items.as_primitive::<Int64Type>().values().to_vec()),
        Arrow::UInt64 => Elements::U64(items.as_primitive::<UInt64Type>().values().to_vec()),
        Arrow::Boolean => {
            Elements::F64((0..items.len()).map(|i| f64::from(u8::from(items.as_boolean().value(i)))).collect())
        }
        Arrow::Binary => {
            Elements::Bytes((0..items.len()).map(|i| items.as_binary::<i32>().value(i).to_vec()).collect())
        }
        Arrow::Utf8 => {
            Elements::Bytes((0..items.len()).map(|i| items.as_string::<i32>().value(i).as_bytes().to_vec()).collect())
        }
        other => return Err(bad(&format!("{other} items cannot be sent as {datatype}"))),
    };
    let data = encode(elements, datatype).map_err(|m| bad(&m))?;
    let name = column.split_once('.').map_or(column, |(_, n)| n);
    Ok(Some(Tensor::new(name, datatype, shape, data)))
}

/// A logged tensor's elements as read back (from a Parquet list or a JSON message).
pub enum Elements {
    F64(Vec<f64>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    Bytes(Vec<Vec<u8>>),
}

/// Elements as the tensor data of `datatype` (what a replay sends); integers keep their exact
/// value where the datatype holds it.
pub fn encode(elements: Elements, datatype: DataType) -> std::result::Result<Vec<u8>, String> {
    let f: Vec<f64> = match (elements, datatype) {
        (Elements::Bytes(b), DataType::Bytes) => return Ok(join_bytes_elements(b.iter().map(Vec::as_slice))),
        (Elements::Bytes(_), dt) | (_, dt @ DataType::Bytes) => {
            return Err(format!("text and numbers do not mix: these items cannot be sent as {dt}"))
        }
        (Elements::I64(v), DataType::I64) => return Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (Elements::U64(v), DataType::U64) => return Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        (Elements::I64(v), _) => v.iter().map(|x| *x as f64).collect(),
        (Elements::U64(v), _) => v.iter().map(|x| *x as f64).collect(),
        (Elements::F64(v), _) => v,
    };
    Ok(match datatype {
        DataType::F32 => f.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
        DataType::F64 => f.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DataType::F16 => f.iter().flat_map(|x| half::f16::from_f64(*x).to_le_bytes()).collect(),
        DataType::BF16 => f.iter().flat_map(|x| half::bf16::from_f64(*x).to_le_bytes()).collect(),
        DataType::I64 => f.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect(),
        DataType::I32 => f.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
        DataType::I16 => f.iter().flat_map(|x| (*x as i16).to_le_bytes()).collect(),
        DataType::I8 => f.iter().map(|x| *x as i8 as u8).collect(),
        DataType::U64 => f.iter().flat_map(|x| (*x as u64).to_le_bytes()).collect(),
        DataType::U32 => f.iter().flat_map(|x| (*x as u32).to_le_bytes()).collect(),
        DataType::U16 => f.iter().flat_map(|x| (*x as u16).to_le_bytes()).collect(),
        DataType::U8 | DataType::Bool => f.iter().map(|x| *x as u8).collect(),
        DataType::Bytes => Vec::new(),
    })
}

/// The numbers of a tensor (for comparing outputs); `None` for BYTES.
pub fn numbers(t: &Tensor) -> Option<Vec<f64>> {
    flotilla_core::tensor::to_f64(t.datatype, &t.data).ok()
}

/// Checks a record batch read back against the expected layout's column names.
pub fn check(batch: &RecordBatch, what: &str) -> Result<()> {
    for c in ["request_id", "time", "status", "latency_us"] {
        if batch.column_by_name(c).is_none() {
            return Err(PayloadError::Invalid(format!("{what}: no column '{c}': not a Flotilla payload log")));
        }
    }
    Ok(())
}
