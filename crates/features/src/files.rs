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
pub fn arrow_type(ty: ValueType) -> DataType {
    match ty {
        ValueType::Int32 => DataType::Int32,
        ValueType::Int64 => DataType::Int64,
        ValueType::Float32 => DataType::Float32,
        ValueType::Float64 => DataType::Float64,
        ValueType::String => DataType::Utf8,
        ValueType::Bool => DataType::Boolean,
        ValueType::Bytes => DataType::Binary,
        ValueType::UnixTimestamp => timestamp_type(),
        list => DataType::List(Arc::new(Field::new_list_field(arrow_type(item_type(list)), true))),
    }
}

/// The item type of a list type (the type itself for a scalar).
fn item_type(ty: ValueType) -> ValueType {
    ty.element().unwrap_or(ty)
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
    if ty.is_list() {
        return list_column(col, name, ty, what, first_row);
    }
    convert(col, name, ty, what, first_row)
}

/// A scalar column converted to `ty` (see [`column`]).
fn convert(col: &ArrayRef, name: &str, ty: ValueType, what: &str, first_row: u64) -> Result<ArrayRef> {
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
            _ => false,
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

/// A list column converted to `ty`: Arrow lists of a readable item type, CSV text holding a
/// JSON array (`[1, 2]`), or a scalar column of the item type (each value a list of one, as an
/// edge file has one edge per row). List items cannot be null.
fn list_column(col: &ArrayRef, name: &str, ty: ValueType, what: &str, first_row: u64) -> Result<ArrayRef> {
    use arrow_array::cast::AsArray;
    use arrow_array::ListArray;
    use arrow_buffer::OffsetBuffer;
    let item = item_type(ty);
    let from = col.data_type();
    let to = arrow_type(ty);
    let list: ListArray = match from {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) | DataType::ListView(f) => {
            // Check the items as a column of their own, so an unreadable item names its row.
            let cast = arrow_cast::cast(col, &DataType::List(f.clone())).map_err(|e| {
                FeatureError::invalid(format!("{what}: column '{name}' ({from}) cannot be read as {ty}: {e}"))
            })?;
            let list = cast.as_list::<i32>();
            let items = convert(list.values(), name, item, what, first_row).map_err(|e| {
                FeatureError::invalid(format!("{e} (an item of the list column '{name}', declared {ty})"))
            })?;
            let field = Arc::new(Field::new_list_field(arrow_type(item), true));
            ListArray::try_new(field, list.offsets().clone(), items, list.nulls().cloned())
                .map_err(|e| FeatureError::invalid(format!("{what}: column '{name}': {e}")))?
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = arrow_cast::cast(col, &DataType::Utf8)
                .map_err(|e| FeatureError::invalid(format!("{what}: column '{name}': {e}")))?;
            let text = text.as_string::<i32>();
            let mut values = Vec::with_capacity(text.len());
            for row in 0..text.len() {
                if text.is_null(row) || text.value(row).trim().is_empty() {
                    values.push(None);
                    continue;
                }
                let bad = |m: String| {
                    FeatureError::invalid(format!(
                        "{what}: column '{name}' row {}: {m} (a {ty} cell holds a JSON array such as [1, 2])",
                        first_row + row as u64 + 1
                    ))
                };
                let json: serde_json::Value =
                    serde_json::from_str(text.value(row)).map_err(|e| bad(format!("not JSON: {e}")))?;
                values.push(ty.from_json(&json).map_err(bad)?);
            }
            return Ok(array_of(ty, &values));
        }
        DataType::Null => return Ok(arrow_array::new_null_array(&to, col.len())),
        _ => {
            let items = convert(col, name, item, what, first_row)?;
            let field = Arc::new(Field::new_list_field(arrow_type(item), true));
            let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(1, items.len()));
            let nulls = items.nulls().cloned();
            ListArray::try_new(field, offsets, items, nulls)
                .map_err(|e| FeatureError::invalid(format!("{what}: column '{name}': {e}")))?
        }
    };
    if let Some(row) = (0..list.len()).find(|r| list.is_valid(*r) && list.value(*r).null_count() > 0) {
        return Err(FeatureError::invalid(format!(
            "{what}: column '{name}' row {}: a list item is null (list items cannot be missing)",
            first_row + row as u64 + 1
        )));
    }
    Ok(Arc::new(list))
}

/// An Arrow column of type [`arrow_type`]`(ty)` holding `values` (which must be of type `ty`;
/// any other value is written as null).
pub fn array_of(ty: ValueType, values: &[Option<Value>]) -> ArrayRef {
    use arrow_array::*;
    if let Some(item) = ty.element() {
        let mut lengths = Vec::with_capacity(values.len());
        let mut items = Vec::new();
        for v in values {
            let list = v.as_ref().and_then(Value::items).unwrap_or_default();
            lengths.push(list.len());
            items.extend(list.iter().cloned().map(Some));
        }
        let valid: Vec<bool> = values.iter().map(|v| v.as_ref().is_some_and(|v| v.items().is_some())).collect();
        let field = Arc::new(Field::new_list_field(arrow_type(item), true));
        let offsets = arrow_buffer::OffsetBuffer::from_lengths(lengths);
        return Arc::new(ListArray::new(field, offsets, array_of(item, &items), Some(valid.into())));
    }
    macro_rules! collect {
        ($array:ty, $variant:ident) => {
            Arc::new(
                values
                    .iter()
                    .map(|v| match v {
                        Some(Value::$variant(x)) => Some(x.clone()),
                        _ => None,
                    })
                    .collect::<$array>(),
            )
        };
    }
    match ty {
        ValueType::Int32 => collect!(Int32Array, Int32),
        ValueType::Int64 => collect!(Int64Array, Int64),
        ValueType::Float32 => collect!(Float32Array, Float32),
        ValueType::Float64 => collect!(Float64Array, Float64),
        ValueType::Bool => collect!(BooleanArray, Bool),
        ValueType::String => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Some(Value::String(s)) => Some(s.as_ref()),
                    _ => None,
                })
                .collect::<StringArray>(),
        ),
        ValueType::Bytes => Arc::new(
            values
                .iter()
                .map(|v| match v {
                    Some(Value::Bytes(b)) => Some(b.as_ref()),
                    _ => None,
                })
                .collect::<BinaryArray>(),
        ),
        _ => {
            let ts: TimestampMicrosecondArray = values
                .iter()
                .map(|v| match v {
                    Some(Value::UnixTimestamp(t)) => Some(*t),
                    _ => None,
                })
                .collect();
            Arc::new(ts.with_timezone("+00:00"))
        }
    }
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
        list => {
            let item = item_type(list);
            let items = col.as_list::<i32>().value(row);
            Value::List(item, (0..items.len()).filter_map(|i| value_at(items.as_ref(), item, i)).collect())
        }
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

/// Event times (µs) of a timestamp column, failing on nulls with the row when `required`.
pub fn timestamps(
    batch: &RecordBatch,
    name: &str,
    what: &str,
    first_row: u64,
    required: bool,
) -> Result<Vec<Option<i64>>> {
    Ok(timestamp_array(batch, name, what, first_row, required)?.iter().collect())
}

/// A file's columns read by up to `threads` threads: Parquet row groups are dealt out in file
/// order (thread 0 the first ones), each thread calls `each(batch, first_row, thread)` on its
/// batches in order; the results come back per thread, so their concatenation is in file order.
/// Only the `columns` the file has are decoded (all of them when one is missing, so that
/// [`column`]'s error lists the file's columns). CSV files are read by one thread.
pub fn read_parallel<T: Send>(
    path: &Path,
    columns: &[&str],
    threads: usize,
    each: impl Fn(RecordBatch, u64, usize) -> Result<T> + Sync,
) -> Result<Vec<Vec<T>>> {
    use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ParquetRecordBatchReaderBuilder};
    use parquet::arrow::ProjectionMask;
    let name = path.display().to_string();
    let is_csv = path.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv"));
    if is_csv {
        let file = open(path)?;
        let mut out = Vec::new();
        let mut first = 0u64;
        for batch in file.batches {
            let batch = batch?;
            let rows = batch.num_rows() as u64;
            out.push(each(batch, first, 0)?);
            first += rows;
        }
        return Ok(vec![out]);
    }
    let file = File::open(path).map_err(|e| FeatureError::invalid(format!("{name}: cannot open: {e}")))?;
    let meta = ArrowReaderMetadata::load(&file, Default::default())
        .map_err(|e| FeatureError::invalid(format!("{name}: not a readable Parquet file: {e}")))?;
    let schema = meta.schema().clone();
    let roots: Option<Vec<usize>> = columns.iter().map(|c| schema.index_of(c).ok()).collect();
    let groups: Vec<(usize, u64)> =
        meta.metadata().row_groups().iter().map(|g| g.num_rows().max(0) as u64).enumerate().collect();
    let threads = threads.clamp(1, groups.len().max(1));
    // Contiguous runs of row groups of about equal rows, one per thread.
    let total: u64 = groups.iter().map(|(_, r)| r).sum();
    let mut runs: Vec<(Vec<usize>, u64)> = Vec::with_capacity(threads);
    let (mut start_row, mut acc) = (0u64, 0u64);
    for (g, rows) in &groups {
        if runs.is_empty() || (acc >= total * runs.len() as u64 / threads as u64 && runs.len() < threads) {
            runs.push((Vec::new(), start_row));
        }
        if let Some(run) = runs.last_mut() {
            run.0.push(*g);
        }
        acc += rows;
        start_row += rows;
    }
    let read = |groups: Vec<usize>, first: u64, thread: usize| -> Result<Vec<T>> {
        let file = File::open(path).map_err(|e| FeatureError::invalid(format!("{name}: cannot open: {e}")))?;
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
            .with_batch_size(BATCH_ROWS)
            .with_row_groups(groups);
        if let Some(roots) = &roots {
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
            builder = builder.with_projection(mask);
        }
        let reader = builder.build().map_err(|e| FeatureError::invalid(format!("{name}: {e}")))?;
        let mut out = Vec::new();
        let mut first = first;
        for batch in reader {
            let batch = batch.map_err(|e| FeatureError::invalid(format!("{name}: {e}")))?;
            let rows = batch.num_rows() as u64;
            out.push(each(batch, first, thread)?);
            first += rows;
        }
        Ok(out)
    };
    if runs.len() <= 1 {
        let (groups, first) = runs.pop().unwrap_or_default();
        return Ok(vec![read(groups, first, 0)?]);
    }
    std::thread::scope(|s| {
        let read = &read;
        let handles: Vec<_> =
            runs.into_iter().enumerate().map(|(t, (groups, first))| s.spawn(move || read(groups, first, t))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(FeatureError::store(format!("{name}: a reader thread panicked")))))
            .collect()
    })
}

/// A timestamp column as UTC microseconds, with the row numbers of nulls checked when `required`.
pub fn timestamp_array(
    batch: &RecordBatch,
    name: &str,
    what: &str,
    first_row: u64,
    required: bool,
) -> Result<arrow_array::TimestampMicrosecondArray> {
    let col = column(batch, name, ValueType::UnixTimestamp, what, first_row)?;
    let ts = col
        .as_any()
        .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
        .ok_or_else(|| FeatureError::invalid(format!("{what}: column '{name}' is not a timestamp")))?;
    if required && ts.null_count() > 0 {
        let row = (0..ts.len()).find(|i| ts.is_null(*i)).unwrap_or(0);
        return Err(FeatureError::invalid(format!(
            "{what}: column '{name}' row {} has no timestamp",
            first_row + row as u64 + 1
        )));
    }
    Ok(ts.clone())
}
