//! Reading Parquet and CSV files as Arrow record batches, and turning their columns into
//! feature values with errors that name the column and row.

use crate::error::{FeatureError, Result};
use crate::value::{Value, ValueType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

pub const BATCH_ROWS: usize = 8192;

/// Record batches from a file, with its row count when the format knows it up front.
pub struct BatchFile {
    pub batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    pub rows: Option<u64>,
}

/// The Arrow type a column of `ty` is read as.
fn arrow_type(ty: ValueType) -> DataType {
    match ty {
        ValueType::Int32 => DataType::Int32,
        ValueType::Int64 => DataType::Int64,
        ValueType::Float32 => DataType::Float32,
        ValueType::Float64 => DataType::Float64,
        ValueType::String => DataType::Utf8,
        ValueType::Bool => DataType::Boolean,
        ValueType::Bytes => DataType::Binary,
        ValueType::UnixTimestamp => timestamp_type(),
    }
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
}

/// Opens a `.parquet` or `.csv` file. CSV columns are read as text (empty = null) and
/// converted by [`column`], so a bad value is reported with its column name and row.
pub fn open(path: &Path) -> Result<BatchFile> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| FeatureError::invalid(format!("{name}: cannot open: {e}")))?;
    let is_csv = path.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv"));
    if !is_csv {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| FeatureError::invalid(format!("{name}: not a readable Parquet file: {e}")))?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let reader =
            builder.with_batch_size(BATCH_ROWS).build().map_err(|e| FeatureError::invalid(format!("{name}: {e}")))?;
        let batches = reader.map(move |b| b.map_err(|e| FeatureError::invalid(format!("{name}: {e}"))));
        return Ok(BatchFile { batches: Box::new(batches), rows: Some(rows) });
    }
    let mut reader = BufReader::new(file);
    let (header, _) = arrow_csv::reader::Format::default()
        .with_header(true)
        .infer_schema(&mut reader, Some(0))
        .map_err(|e| FeatureError::invalid(format!("{name}: cannot read the CSV header: {e}")))?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| FeatureError::invalid(format!("{name}: {e}")))?;
    let fields: Vec<Field> = header.fields().iter().map(|f| Field::new(f.name(), DataType::Utf8, true)).collect();
    let csv = arrow_csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
        .with_header(true)
        .with_batch_size(BATCH_ROWS)
        .build(reader)
        .map_err(|e| FeatureError::invalid(format!("{name}: {e}")))?;
    let batches = csv.map(move |b| b.map_err(|e| FeatureError::invalid(format!("{name}: {e}"))));
    Ok(BatchFile { batches: Box::new(batches), rows: None })
}

/// A column of a batch converted to `ty`: checks that the file's type can be read as the
/// declared one and that no value is lost in the conversion.
pub fn column(batch: &RecordBatch, name: &str, ty: ValueType, what: &str, first_row: u64) -> Result<ArrayRef> {
    let col = batch.column_by_name(name).ok_or_else(|| {
        let have: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        FeatureError::invalid(format!("{what}: column '{name}' is missing; the file has {}", have.join(", ")))
    })?;
    let from = col.data_type();
    let text = matches!(from, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    let allowed = text
        || match ty {
            ValueType::Int32 | ValueType::Int64 => from.is_integer(),
            ValueType::Float32 | ValueType::Float64 => from.is_numeric(),
            ValueType::String => {
                matches!(from, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..))
            }
            ValueType::Bool => matches!(from, DataType::Boolean),
            ValueType::Bytes => matches!(
                from,
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::Utf8 | DataType::LargeUtf8
            ),
            ValueType::UnixTimestamp => {
                matches!(
                    from,
                    DataType::Timestamp(..)
                        | DataType::Date32
                        | DataType::Date64
                        | DataType::Utf8
                        | DataType::LargeUtf8
                )
            }
        };
    if !allowed && from != &DataType::Null {
        return Err(FeatureError::invalid(format!("{what}: column '{name}' is {from} in the file but declared {ty}")));
    }
    let to = arrow_type(ty);
    if from == &to {
        return Ok(col.clone());
    }
    let cast = arrow_cast::cast(col, &to)
        .map_err(|e| FeatureError::invalid(format!("{what}: column '{name}' ({from}) cannot be read as {ty}: {e}")))?;
    // A value that becomes null in the cast did not fit: name the first one.
    if cast.null_count() != col.null_count() {
        if let Some(row) = (0..col.len()).find(|i| col.is_valid(*i) && cast.is_null(*i)) {
            let shown = arrow_cast::display::array_value_to_string(col, row).unwrap_or_default();
            return Err(FeatureError::invalid(format!(
                "{what}: column '{name}' row {}: '{shown}' is not a valid {ty}",
                first_row + row as u64 + 1
            )));
        }
    }
    Ok(cast)
}

/// The value at `row` of a column produced by [`column`] for `ty`.
pub fn value_at(col: &dyn Array, ty: ValueType, row: usize) -> Option<Value> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    if col.is_null(row) {
        return None;
    }
    Some(match ty {
        ValueType::Int32 => Value::Int32(col.as_primitive::<Int32Type>().value(row)),
        ValueType::Int64 => Value::Int64(col.as_primitive::<Int64Type>().value(row)),
        ValueType::Float32 => Value::Float32(col.as_primitive::<Float32Type>().value(row)),
        ValueType::Float64 => Value::Float64(col.as_primitive::<Float64Type>().value(row)),
        ValueType::String => Value::String(col.as_string::<i32>().value(row).into()),
        ValueType::Bool => Value::Bool(col.as_boolean().value(row)),
        ValueType::Bytes => Value::Bytes(col.as_binary::<i32>().value(row).into()),
        ValueType::UnixTimestamp => Value::UnixTimestamp(col.as_primitive::<TimestampMicrosecondType>().value(row)),
    })
}

/// Appends the join-key part of `row` of a column produced by [`column`] for `ty`, encoded as
/// [`crate::record::encode_key`] encodes it, without allocating; `false` when the value is null.
pub fn key_into(col: &dyn Array, ty: ValueType, row: usize, out: &mut Vec<u8>) -> bool {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    if col.is_null(row) {
        return false;
    }
    match ty {
        ValueType::Int64 => crate::record::put_int(col.as_primitive::<Int64Type>().value(row), out),
        ValueType::Int32 => crate::record::put_int(i64::from(col.as_primitive::<Int32Type>().value(row)), out),
        ValueType::String => {
            out.push(b's');
            crate::value::put_bytes(col.as_string::<i32>().value(row).as_bytes(), out);
        }
        ValueType::Bytes => {
            out.push(b'b');
            crate::value::put_bytes(col.as_binary::<i32>().value(row), out);
        }
        _ => return false,
    }
    true
}

/// Event times (µs) of a timestamp column, failing on nulls with the row.
pub fn timestamps(
    batch: &RecordBatch,
    name: &str,
    what: &str,
    first_row: u64,
    required: bool,
) -> Result<Vec<Option<i64>>> {
    let col = column(batch, name, ValueType::UnixTimestamp, what, first_row)?;
    let ts = col
        .as_any()
        .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
        .ok_or_else(|| FeatureError::invalid(format!("{what}: column '{name}' is not a timestamp")))?;
    let mut out = Vec::with_capacity(ts.len());
    for i in 0..ts.len() {
        if ts.is_null(i) {
            if required {
                return Err(FeatureError::invalid(format!(
                    "{what}: column '{name}' row {} has no timestamp",
                    first_row + i as u64 + 1
                )));
            }
            out.push(None);
        } else {
            out.push(Some(ts.value(i)));
        }
    }
    Ok(out)
}
